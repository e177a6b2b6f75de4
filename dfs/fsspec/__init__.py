"""dfs for fsspec: `fsspec.filesystem("dfs")`, `pd.read_parquet("dfs://HOST:PORT/t.parquet")`.

Registered with fsspec through the `fsspec.specs` entry point (pyproject.toml), so no
`import dfs` is needed. See filesystem.py (the filesystem), files.py (open files) and urls.py.
"""

from .files import DFSFile
from .filesystem import DFSFileSystem

__all__ = ["DFSFile", "DFSFileSystem"]
