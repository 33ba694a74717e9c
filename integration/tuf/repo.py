#!/usr/bin/env python3
"""Builds and changes TUF repositories for ferry's tests, with python-tuf.

The repository lives in DIR: `metadata/` and `targets/` are what a web
server publishes, `keys/` holds the private keys (by key id). Every command
leaves a consistent, signed repository behind unless told otherwise.

    repo.py init DIR [--no-consistent] [--days N]
    repo.py target DIR NAME FILE [--role ROLE]
    repo.py delegate DIR ROLE --paths P [P …] [--terminating] [--parent ROLE]
    repo.py rotate DIR --role ROLE [--keys N] [--threshold N] [--sign-with-new K]
    repo.py expire DIR ROLE --days D
    repo.py publish DIR [--pin ROLE=VERSION]      # new snapshot and timestamp
    repo.py timestamp DIR [--snapshot-version N]  # new timestamp only
"""

import argparse
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

TOP = ("root", "timestamp", "snapshot", "targets")


def expiry(days: float) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


class Repo:
    def __init__(self, d: str):
        self.d = d
        self.meta_dir = os.path.join(d, "metadata")
        self.keys_dir = os.path.join(d, "keys")
        self.targets_dir = os.path.join(d, "targets")

    # ---- keys -------------------------------------------------------------
    def new_key(self) -> SSlibKey:
        signer = CryptoSigner.generate_ed25519()
        key = signer.public_key
        with open(os.path.join(self.keys_dir, key.keyid + ".pem"), "wb") as f:
            f.write(signer.private_bytes)
        return key

    def signer(self, keyid: str) -> CryptoSigner | None:
        path = os.path.join(self.keys_dir, keyid + ".pem")
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            priv = serialization.load_pem_private_key(f.read(), None)
        return CryptoSigner(priv)

    # ---- metadata ---------------------------------------------------------
    def load(self, role: str) -> Metadata:
        return Metadata.from_file(os.path.join(self.meta_dir, quote(role, "") + ".json"))

    def keyids_for(self, role: str) -> list[str]:
        root = self.load("root").signed
        if role in TOP:
            return list(root.roles[role].keyids)
        for parent in self.all_targets_roles():
            d = self.load(parent).signed.delegations
            if d and d.roles and role in d.roles:
                return list(d.roles[role].keyids)
        raise SystemExit(f"no delegation for {role}")

    def all_targets_roles(self) -> list[str]:
        out, todo = [], ["targets"]
        while todo:
            r = todo.pop()
            if not os.path.exists(os.path.join(self.meta_dir, quote(r, "") + ".json")):
                continue
            out.append(r)
            d = self.load(r).signed.delegations
            if d and d.roles:
                todo.extend(d.roles)
        return out

    def write(self, md: Metadata, role: str, keyids: list[str] | None = None) -> None:
        md.signatures.clear()
        for keyid in keyids if keyids is not None else self.keyids_for(role):
            s = self.signer(keyid)
            if s is not None:
                md.sign(s, append=True)
        data = md.to_bytes(JSONSerializer(compact=False))
        name = quote(role, "")
        consistent = role == "root" or self.consistent()
        if role != "timestamp" and consistent:
            with open(os.path.join(self.meta_dir, f"{md.signed.version}.{name}.json"), "wb") as f:
                f.write(data)
        with open(os.path.join(self.meta_dir, f"{name}.json"), "wb") as f:
            f.write(data)

    def consistent(self) -> bool:
        return self.load("root").signed.consistent_snapshot

    def publish(self, snapshot: bool = True, pins: dict | None = None,
                snapshot_version: int | None = None) -> None:
        """New snapshot (unless told not to) and timestamp. `pins` forces
        role versions in the snapshot, `snapshot_version` the snapshot
        version the timestamp names (to build rollback attacks)."""
        if snapshot:
            snap = self.load("snapshot")
            snap.signed.version += 1
            for r in self.all_targets_roles():
                snap.signed.meta[f"{r}.json"] = MetaFile(self.load(r).signed.version)
            for r, v in (pins or {}).items():
                snap.signed.meta[f"{r}.json"] = MetaFile(v)
            self.write(snap, "snapshot")
        ts = self.load("timestamp")
        ts.signed.version += 1
        ts.signed.snapshot_meta = MetaFile(snapshot_version or self.load("snapshot").signed.version)
        self.write(ts, "timestamp")


def cmd_init(a) -> None:
    r = Repo(a.dir)
    for d in (r.meta_dir, r.keys_dir, r.targets_dir):
        os.makedirs(d, exist_ok=True)
    root = Root(expires=expiry(a.days), consistent_snapshot=a.consistent)
    for role in TOP:
        root.add_key(r.new_key(), role)
    md = Metadata(root)
    # Sign the first root by hand: keyids_for() reads the root from disk.
    for keyid in root.roles["root"].keyids:
        md.sign(r.signer(keyid), append=True)
    r.write(md, "root", list(root.roles["root"].keyids))
    r.write(Metadata(Targets(expires=expiry(a.days))), "targets")
    r.write(
        Metadata(Snapshot(expires=expiry(a.days), meta={"targets.json": MetaFile(1)})),
        "snapshot",
    )
    r.write(
        Metadata(Timestamp(expires=expiry(a.days), snapshot_meta=MetaFile(1))),
        "timestamp",
    )


def copy_target(src: str, out_dir: str, names: list) -> None:
    """SRC copied under OUT_DIR by each name, holes kept: a slot image is
    mostly empty, and a full copy of each doubled a firmware repository.
    (Copies, not links: tests rewrite one name to tamper with it.)"""
    for name in names:
        path = os.path.join(out_dir, name)
        if os.path.lexists(path):
            os.unlink(path)
        subprocess.run(["cp", "--sparse=always", "--reflink=auto", src, path], check=True)


def cmd_target(a) -> None:
    r = Repo(a.dir)
    tf = TargetFile.from_file(a.name, a.file, ["sha256"])
    md = r.load(a.role)
    md.signed.targets[a.name] = tf
    md.signed.version += 1
    r.write(md, a.role)
    dirname, _, base = a.name.rpartition("/")
    out_dir = os.path.join(r.targets_dir, dirname)
    os.makedirs(out_dir, exist_ok=True)
    copy_target(a.file, out_dir, [base, f"{tf.hashes['sha256']}.{base}"])
    r.publish()


def cmd_tree(a) -> None:
    """Every file under SRC becomes a target named by its relative path, in
    one new version of ROLE, published once (a whole revision at a time)."""
    r = Repo(a.dir)
    md = r.load(a.role)
    for top, _, names in os.walk(a.src):
        for n in sorted(names):
            path = os.path.join(top, n)
            name = os.path.relpath(path, a.src)
            tf = TargetFile.from_file(name, path, ["sha256"])
            md.signed.targets[name] = tf
            dirname, _, base = name.rpartition("/")
            out_dir = os.path.join(r.targets_dir, dirname)
            os.makedirs(out_dir, exist_ok=True)
            for out in (base, f"{tf.hashes['sha256']}.{base}"):
                shutil.copyfile(path, os.path.join(out_dir, out))
    md.signed.version += 1
    r.write(md, a.role)
    r.publish()


def cmd_delegate(a) -> None:
    r = Repo(a.dir)
    parent = r.load(a.parent)
    key = r.new_key()
    d = parent.signed.delegations or Delegations(keys={}, roles={})
    d.keys[key.keyid] = key
    d.roles[a.role] = DelegatedRole(a.role, [key.keyid], 1, a.terminating, paths=a.paths)
    parent.signed.delegations = d
    parent.signed.version += 1
    r.write(parent, a.parent)
    r.write(Metadata(Targets(expires=expiry(a.days))), a.role, [key.keyid])
    r.publish()


def cmd_rotate(a) -> None:
    """A new root version giving ROLE fresh keys and a threshold."""
    r = Repo(a.dir)
    md = r.load("root")
    old_root_keys = list(md.signed.roles["root"].keyids)
    for keyid in list(md.signed.roles[a.role].keyids):
        md.signed.revoke_key(keyid, a.role)
    new_keys = [r.new_key() for _ in range(a.keys)]
    for k in new_keys:
        md.signed.add_key(k, a.role)
    md.signed.roles[a.role].threshold = a.threshold
    md.signed.version += 1
    new_root_keys = list(md.signed.roles["root"].keyids)
    signers = old_root_keys + new_root_keys[: a.sign_with_new if a.sign_with_new >= 0 else None]
    # Unique, in order.
    r.write(md, "root", list(dict.fromkeys(signers)))
    if a.role in ("timestamp", "snapshot"):
        r.publish()


def cmd_expire(a) -> None:
    r = Repo(a.dir)
    md = r.load(a.role)
    md.signed.expires = expiry(a.days)
    md.signed.version += 1
    r.write(md, a.role)
    if a.role == "timestamp":
        return
    if a.role == "snapshot":
        r.publish(snapshot=False)
    elif a.role != "root":
        r.publish()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("init")
    s.add_argument("dir")
    s.add_argument("--no-consistent", dest="consistent", action="store_false")
    s.add_argument("--days", type=float, default=365)
    s = sub.add_parser("target")
    s.add_argument("dir")
    s.add_argument("name")
    s.add_argument("file")
    s.add_argument("--role", default="targets")
    s = sub.add_parser("tree")
    s.add_argument("dir")
    s.add_argument("src")
    s.add_argument("--role", default="targets")
    s = sub.add_parser("delegate")
    s.add_argument("dir")
    s.add_argument("role")
    s.add_argument("--paths", nargs="+", required=True)
    s.add_argument("--terminating", action="store_true")
    s.add_argument("--parent", default="targets")
    s.add_argument("--days", type=float, default=365)
    s = sub.add_parser("rotate")
    s.add_argument("dir")
    s.add_argument("--role", required=True)
    s.add_argument("--keys", type=int, default=1)
    s.add_argument("--threshold", type=int, default=1)
    s.add_argument("--sign-with-new", type=int, default=-1,
                   help="sign with only this many of the new root keys (default all)")
    s = sub.add_parser("expire")
    s.add_argument("dir")
    s.add_argument("role")
    s.add_argument("--days", type=float, required=True)
    s = sub.add_parser("publish")
    s.add_argument("dir")
    s.add_argument("--pin", action="append", default=[], metavar="ROLE=VERSION",
                   help="list ROLE at VERSION in the new snapshot")
    s = sub.add_parser("timestamp")
    s.add_argument("dir")
    s.add_argument("--snapshot-version", type=int)
    a = p.parse_args()
    if a.cmd == "publish":
        pins = {k: int(v) for k, v in (x.split("=", 1) for x in a.pin)}
        Repo(a.dir).publish(pins=pins)
    elif a.cmd == "timestamp":
        Repo(a.dir).publish(snapshot=False, snapshot_version=a.snapshot_version)
    else:
        globals()["cmd_" + a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
