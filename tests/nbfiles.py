"""Small notebooks for the tests, written from ``(kind, source)`` cells."""

from __future__ import annotations

from pathlib import Path


def write_notebook(path: str | Path, cells: list[tuple[str, str]], **cell_changes: dict) -> Path:
    """A notebook at ``path``: kind ``markdown``, ``code`` or ``parameters`` (a code cell
    tagged ``parameters``), kernel ``python3``. ``cell_changes``: ``c2={...}`` updates cell 2
    (outputs, execution counts) to make a notebook that is not clean."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for kind, source in cells:
        if kind == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(source))
            if kind == "parameters":
                nb.cells[-1].metadata["tags"] = ["parameters"]
    for i, change in cell_changes.items():
        nb.cells[int(i[1:])].update(change)
    nbformat.write(nb, str(path))
    return Path(path)
