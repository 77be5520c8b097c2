"""What the shards' manifest says: a split's shards with their sample counts, the class names.

The manifest itself is read once per process by :func:`avssl.data.remote.read_manifest`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from avssl.data import remote
from avssl.data.errors import DataError


@dataclass(frozen=True)
class ShardList:
    """The shards of one split and how many samples each holds (from manifest.json).

    ``files``: what opens each shard (a path, a URL or a ``pipe:`` command: :mod:`avssl.data.remote`);
    ``names``: its file name in the manifest (what seeds its samples' draws, so a split read
    from a server draws what it draws from a local copy)."""

    files: tuple[str, ...]
    counts: tuple[int, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            object.__setattr__(self, "names", tuple(Path(f).name for f in self.files))

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def require_files(self) -> None:
        """Stop before any work when a shard the manifest lists is not there (its samples
        would otherwise be silently missing from every epoch): a local file, or an http(s)
        URL whose HEAD request fails. A ``pipe:`` command is only run to read (its failures
        are counted as lost samples then)."""
        missing = remote.unreachable(self.files)
        if missing:
            lost = sum(c for f, c in zip(self.files, self.counts) if f in set(missing))
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise DataError(f"{len(missing)} of the {len(self.files)} shards listed in the manifest are missing "
                            f"({lost} of {self.num_samples} samples): {shown}; rewrite the shards (`avssl shards`)")

    @classmethod
    def from_manifest(cls, shards: str | Path, split: str) -> "ShardList":
        """``shards``: ``data.shards``, a folder, its URL or a list of shards (:mod:`avssl.data.remote`)."""
        manifest = remote.read_manifest(str(shards))
        splits = manifest.get("splits", {})
        if split not in splits:
            raise KeyError(f"split {split!r} not in {remote.manifest_location(str(shards))} (it has {sorted(splits)})")
        entries = splits[split]["shards"]
        names = [e["file"] for e in entries]
        return cls(
            files=tuple(remote.shard_specs(str(shards), manifest, split, names)),
            counts=tuple(int(e["num_samples"]) for e in entries),
            names=tuple(Path(n).name for n in names),
        )


def manifest_classes(shards: str | Path) -> list[str]:
    """The class names `avssl shards` recorded in the manifest (empty when unlabelled or
    when a local folder has no manifest)."""
    manifest = remote.read_manifest(str(shards), missing_ok=True)
    return list((manifest or {}).get("classes") or [])


__all__ = ["ShardList", "manifest_classes"]
