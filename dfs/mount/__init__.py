"""dfs-mount: the cluster as a FUSE 3 file system (pyfuse3 in asyncio mode).

Ordinary programs (cp, rsync, tar, git, zip) use dfs through it without knowing about dfs.
The kernel asks by inode; `inodes.py` maps inodes to dfs paths, `attrs.py` turns meta's
entries into stat results, `handles.py` owns open files (reads through the verified,
failing-over reader; writes spooled locally and uploaded atomically at close), `ops.py`
answers the kernel, and `cli.py` mounts. Only the `[mount]` extra needs pyfuse3: nothing
else in dfs imports this package.
"""
