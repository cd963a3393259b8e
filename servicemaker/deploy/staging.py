"""The staging folder of a deploy and the commit that publishes it, safe against a deploy killed at any point.

Everything a deploy writes goes first into a staging folder beside the repository (``.<repo>.svc-deploy-XXXXXXXX``),
locked with ``flock`` for as long as the deploy runs. Then the commit:

* into a repository that does not exist yet: the whole repository is assembled inside the staging folder and
  appears with one ``rename``. A reader sees no repository, or all of it.
* into an existing repository: a journal (``commit.json``) is written first, naming every model folder about to be
  swapped in, with ``requirements.txt`` and ``deploy_status.json`` kept as they were; each model folder is then
  swapped in atomically (Linux ``renameat2(RENAME_EXCHANGE)``, elsewhere two renames), the two files replaced,
  and removing the journal commits the deploy.

A deploy that dies (``SIGKILL``, out of memory) leaves its staging folder unlocked. The next svc-deploy to a
repository of that name sweeps such folders (beside the repository or above it): one holding a journal is rolled
back first (every model folder the dead deploy swapped in is swapped out and the folder it replaced put back, the
two files restored), then the folder is removed. Folders still locked belong to a running deploy and are left alone.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

from servicemaker.errors import ServiceMakerError

JOURNAL = "commit.json"
JOURNAL_FORMAT = "servicemaker.deploy_commit/1"
#: sub-folder of the staging folder holding the finished model folders
MODELS = "models"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def stage_prefix(repo: Path) -> str:
    return f".{repo.absolute().name}.svc-deploy-"


def staging_parent(repo: Path) -> Path:
    """The nearest existing folder at or above the repository's parent (renames stay on one filesystem)."""
    parent = repo.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


@functools.lru_cache(maxsize=1)
def _renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the system or file system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _lock(path: Path, wait: bool) -> int | None:
    """A descriptor of folder ``path`` holding its lock; None when another process holds it or the folder is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        if os.path.samestat(os.fstat(fd), os.lstat(path)):  # a sweeper may have removed it while we waited
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def roll_back(stage: Path, journal: dict[str, Any]) -> None:
    """Undo a journaled commit, whatever point it reached. Safe to run again after being interrupted itself."""
    repo = Path(journal["repo"])
    for entry in reversed(journal["models"]):
        name, ours, had = entry["name"], (entry["dev"], entry["ino"]), entry["had"]
        live, candidates = repo / name, (stage / MODELS / name, stage / "replaced" / name)
        if _ident(live) == ours:
            back = next((p for p in candidates if had and _ident(p) not in (None, ours)), None)
            if back is None or not _exchange(back, live):
                (stage / "discard").mkdir(exist_ok=True)
                os.rename(live, stage / "discard" / name)
        if had and not os.path.lexists(live):
            back = next((p for p in candidates if _ident(p) not in (None, ours)), None)
            if back is not None:
                os.rename(back, live)
    for name, had in journal["files"].items():
        saved = stage / "backup" / name
        if had and saved.exists():
            os.replace(saved, repo / name)
        elif not had:
            (repo / name).unlink(missing_ok=True)


def _read_journal(stage: Path) -> dict[str, Any] | None:
    path = stage / JOURNAL
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != JOURNAL_FORMAT:
            raise ValueError(doc.get("format"))
        return doc
    except (ValueError, AttributeError) as err:
        raise ServiceMakerError(f"the commit journal {path} of an interrupted deploy cannot be read ({err})",
                                hint=f"check the repository by hand (replaced model folders are in {stage}), "
                                     "then remove that folder") from None


def sweep(repo: Path, own: Path | None = None, report: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Roll back and remove the staging folders of dead deploys to a repository of this name; returns them."""
    prefix, uid, removed = stage_prefix(repo), os.getuid(), []
    start = repo.absolute().parent
    for folder in (start, *start.parents):
        try:
            entries = [e for e in os.scandir(folder) if e.name.startswith(prefix)]
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if path == own or not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
                continue
            fd = _lock(path, wait=False)
            if fd is None:
                continue  # a deploy that is still running
            try:
                journal = _read_journal(path)
                if journal is not None:
                    report(f"Rolling back the interrupted commit of a deploy to {journal['repo']}")
                    try:
                        roll_back(path, journal)
                    except OSError as err:
                        raise ServiceMakerError(
                            f"cannot roll back the interrupted deploy to {journal['repo']}: {err}",
                            hint=f"the folders it replaced are in {path}; fix the cause and run svc-deploy again"
                        ) from None
                    (path / JOURNAL).unlink()
                report(f"Removing {path.name}, left by an interrupted deploy")
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            finally:
                os.close(fd)
    return removed


class Staging:
    """The locked staging folder of one deploy and its commit: :meth:`begin`, :meth:`move_in` each model,
    :meth:`write_file`, :meth:`finish`; :meth:`close` always (it rolls back a commit that did not finish)."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        parent = staging_parent(repo)
        fd = None
        while fd is None:  # retried only if a sweeper took the brand-new folder for a dead one
            try:
                self.path = Path(tempfile.mkdtemp(prefix=stage_prefix(repo), dir=parent))
            except OSError as err:
                raise ServiceMakerError(f"cannot create a staging folder in {parent}: {err.strerror}",
                                        hint="svc-deploy writes beside the repository: check that folder's "
                                             "permissions and free space") from None
            fd = _lock(self.path, wait=True)
        self._fd: int | None = fd
        self.root: Path | None = None
        self._journal: dict[str, Any] | None = None

    def begin(self, names: list[str], files: tuple[str, ...]) -> Path:
        """Start the commit of the model folders ``names`` (finished under ``MODELS/``) and of the top-level
        ``files``; returns the folder they are written into (the repository, or the one that will become it)."""
        if not self.repo.exists():
            self.root = self.path / "fresh"
            self.root.mkdir()
            return self.root
        self.root = self.repo
        backup = self.path / "backup"
        backup.mkdir()
        kept: dict[str, bool] = {}
        for name in files:
            kept[name] = (self.repo / name).is_file()
            if kept[name]:
                try:
                    os.link(self.repo / name, backup / name)
                except OSError:
                    shutil.copy2(self.repo / name, backup / name)
        models = []
        for name in names:
            st = os.lstat(self.path / MODELS / name)
            models.append({"name": name, "had": os.path.lexists(self.repo / name), "dev": st.st_dev,
                           "ino": st.st_ino})
        self._journal = {"format": JOURNAL_FORMAT, "repo": str(self.repo.absolute()), "models": models,
                         "files": kept}
        _write_json(self.path / JOURNAL, self._journal)
        return self.root

    def move_in(self, name: str) -> bool:
        """Put finished model folder ``name`` in place; True if it replaced one."""
        assert self.root is not None
        staged, live = self.path / MODELS / name, self.root / name
        if not os.path.lexists(live):
            os.rename(staged, live)
            return False
        if not _exchange(staged, live):
            (self.path / "replaced").mkdir(exist_ok=True)
            os.rename(live, self.path / "replaced" / name)
            os.rename(staged, live)
        return True

    def write_file(self, name: str, text: str) -> None:
        assert self.root is not None
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        os.replace(tmp, self.root / name)

    def finish(self) -> None:
        """The commit point: the new repository appears, or the journal goes."""
        assert self.root is not None
        if self._journal is None:
            try:
                self.repo.parent.mkdir(parents=True, exist_ok=True)
                os.rename(self.root, self.repo)
            except OSError as err:
                raise ServiceMakerError(f"cannot move the new repository into place at {self.repo}: {err.strerror}",
                                        hint="another process wrote that path meanwhile, or check its "
                                             "permissions; run svc-deploy again") from None
        else:
            (self.path / JOURNAL).unlink()
            self._journal = None

    def undo(self) -> None:
        """Roll back a commit that failed part-way (the deploy raises its error after this)."""
        if self._journal is not None:
            roll_back(self.path, self._journal)
            (self.path / JOURNAL).unlink()
            self._journal = None

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self.undo()
            shutil.rmtree(self.path, ignore_errors=True)
        except OSError:
            pass  # the journal stays: the next deploy's sweep rolls back again
        finally:
            os.close(self._fd)
            self._fd = None
