"""How the data writers write a file: a temporary file beside it, then a rename, so that an
interrupted run leaves the old file or none, never half of one."""
import os


def write_atomically(path, payload):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)
