"""A real OpenLDAP server for the LDAP connector's tests: Debian's ``slapd``, installed when missing.

:func:`shared_slapd` starts one ``slapd`` per test process (slapd.conf style configuration
in a temporary folder, ``mdb`` backend, suffix ``dc=example,dc=com``, the core, cosine,
inetorgperson and nis schemas, the ppolicy overlay with a default policy that honours
``pwdAccountLockedTime``), listening on ``ldap://127.0.0.1:<free port>/`` and running in
the foreground (``-d 0``) so that it can be terminated. Each test then gets its own subtree
(:func:`seed_tree`): ``ou=people`` with a few users and ``ou=groups`` with groups, so tests
neither share entries nor need a reload.

Installing the package may also start a system ``slapd`` on port 389 through its postinst
script; nothing here uses it.
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3
import pytest
from ldap3.core.exceptions import LDAPException

from tests.debian import ensure_debian_packages

SLAPD = Path("/usr/sbin/slapd")
MODULES = Path("/usr/lib/ldap")
SCHEMAS = Path("/etc/ldap/schema")
SUFFIX = "dc=example,dc=com"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "admin-secret"
POLICY_DN = f"cn=default-policy,{SUFFIX}"
JANE = "jane@example.com"
JANE_PASSWORD = "jane-password"

_trees = itertools.count(1)
_server: Slapd | None = None
_unavailable: str | None = None

SLAPD_CONF = """\
include {schemas}/core.schema
include {schemas}/cosine.schema
include {schemas}/inetorgperson.schema
include {schemas}/nis.schema
modulepath {modules}
moduleload back_mdb
moduleload ppolicy
pidfile {folder}/slapd.pid
argsfile {folder}/slapd.args

database mdb
maxsize 268435456
suffix "{suffix}"
rootdn "{admin}"
rootpw {password}
directory {folder}/data
index objectClass eq
index mail,uid,member,memberUid eq
overlay ppolicy
ppolicy_default "{policy}"
"""


def ensure_slapd() -> str | None:
    """Install ``slapd`` and ``ldap-utils`` when ``/usr/sbin/slapd`` is missing.

    Returns:
        None when slapd is there, else why it could not be installed (for ``pytest.skip``).
    """
    return ensure_debian_packages(SLAPD, ["slapd", "ldap-utils"], timeout=900)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin(url: str) -> ldap3.Connection:
    """A connection bound as the rootdn (for seeding and checking entries)."""
    server = ldap3.Server(url, get_info=ldap3.NONE, connect_timeout=5)
    return ldap3.Connection(server, ADMIN_DN, ADMIN_PASSWORD, raise_exceptions=True,
                            auto_bind=ldap3.AUTO_BIND_NO_TLS, receive_timeout=10)


@dataclass
class Slapd:
    """A running slapd: its URL, process and folder."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    folder: Path

    def stop(self) -> None:
        """Terminate the server and remove its folder."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def is_alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None


def start_slapd(folder: Path) -> Slapd:
    """Write the configuration into ``folder``, start slapd in the foreground and wait until it accepts binds."""
    (folder / "data").mkdir(parents=True)
    conf = folder / "slapd.conf"
    conf.write_text(SLAPD_CONF.format(schemas=SCHEMAS, modules=MODULES, folder=folder, suffix=SUFFIX,
                                      admin=ADMIN_DN, password=ADMIN_PASSWORD, policy=POLICY_DN))
    port = free_port()
    url = f"ldap://127.0.0.1:{port}/"
    log = (folder / "slapd.log").open("wb")
    # -d 0: stay in the foreground (no fork), so terminate() stops it; the log is for failures.
    process = subprocess.Popen([str(SLAPD), "-d", "0", "-h", url, "-f", str(conf)],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = Slapd(url=url.rstrip("/"), port=port, process=process, folder=folder)
    deadline = time.monotonic() + 20
    while True:
        if not server.is_alive():
            text = (folder / "slapd.log").read_text(errors="replace")[-2000:]
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"slapd exited with {process.returncode}:\n{text}")
        try:
            admin(server.url).unbind()
            break
        except LDAPException:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError("slapd did not accept binds within 20 s") from None
            time.sleep(0.05)
    _seed_suffix(server.url)
    return server


def _seed_suffix(url: str) -> None:
    """The suffix entry and the default password policy (``pwdLockout`` so a locked account cannot bind)."""
    conn = admin(url)
    try:
        conn.add(SUFFIX, ["dcObject", "organization"], {"dc": "example", "o": "Example"})
        conn.add(POLICY_DN, ["organizationalRole", "pwdPolicy"],
                 {"cn": "default-policy", "pwdAttribute": "userPassword", "pwdLockout": "TRUE"})
    finally:
        conn.unbind()


def shared_slapd() -> Slapd:
    """The test process's slapd, started on first use (installing the package first if needed).

    Skips the calling test with a clear reason when slapd cannot be installed.
    """
    global _server, _unavailable
    if _unavailable is None and _server is None:
        _unavailable = ensure_slapd()
        if _unavailable is None:
            _server = start_slapd(Path(tempfile.mkdtemp(prefix="dsr-slapd-")))
            atexit.register(_server.stop)
    if _unavailable is not None:
        pytest.skip(_unavailable)
    assert _server is not None
    return _server


USERS: dict[str, dict[str, Any]] = {
    "jane": {"cn": "Jane Doe", "sn": "Doe", "givenName": "Jane", "mail": JANE, "telephoneNumber": "+49 30 1234567",
             "title": "Engineer", "description": "Likes LDAP", "userPassword": JANE_PASSWORD, "shadowFlag": "0"},
    "john": {"cn": "John Roe", "sn": "Roe", "givenName": "John", "mail": "john@example.com",
             "userPassword": "john-password"},
    "janet": {"cn": "Janet Poe", "sn": "Poe", "givenName": "Janet", "mail": "janet@example.com",
              "userPassword": "janet-password"},
}
GROUPS: dict[str, list[str]] = {"staff": ["jane", "john"], "admins": ["jane", "janet"], "ops": ["john"]}
POSIX_GROUPS: dict[str, list[str]] = {"unix": ["jane", "john"], "backup": ["janet"]}


@dataclass
class Tree:
    """One test's subtree ``ou=tN,dc=example,dc=com``: people, groups and a bound admin connection."""

    url: str
    base: str
    conn: ldap3.Connection
    people: str = field(init=False)
    groups: str = field(init=False)

    def __post_init__(self) -> None:
        self.people = f"ou=people,{self.base}"
        self.groups = f"ou=groups,{self.base}"

    def user(self, uid: str) -> str:
        """The DN of user ``uid``."""
        return f"uid={uid},{self.people}"

    def group(self, cn: str) -> str:
        """The DN of group ``cn``."""
        return f"cn={cn},{self.groups}"

    def options(self, **overrides: Any) -> dict[str, Any]:
        """Connector options for this subtree, bound as the rootdn."""
        return {"url": self.url, "bind_dn": ADMIN_DN, "password": ADMIN_PASSWORD, "base_dn": self.people,
                "group_base_dn": self.groups, **overrides}

    def entry(self, dn: str, *attributes: str) -> dict[str, list[str]] | None:
        """The attributes of ``dn`` (all user attributes unless named), or None when it does not exist."""
        try:
            self.conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=list(attributes) or ["*"])
        except ldap3.core.exceptions.LDAPNoSuchObjectResult:
            return None
        return {k: list(v) for k, v in self.conn.response[0]["attributes"].items()}

    def members(self, cn: str) -> list[str]:
        """The ``member`` (or, for a posixGroup, ``memberUid``) values of group ``cn``."""
        entry = self.entry(self.group(cn), "member", "memberUid") or {}
        return sorted(entry.get("member") or entry.get("memberUid") or [])

    def bind_as(self, uid: str, password: str) -> bool:
        """Whether user ``uid`` can bind with ``password``."""
        server = ldap3.Server(self.url, get_info=ldap3.NONE, connect_timeout=5)
        conn = ldap3.Connection(server, self.user(uid), password, raise_exceptions=False, receive_timeout=10)
        try:
            return bool(conn.bind())
        finally:
            conn.unbind()


def seed_tree(server: Slapd) -> Tree:
    """A fresh subtree with people (jane, john, janet), groupOfNames and posixGroup groups."""
    conn = admin(server.url)
    base = f"ou=t{next(_trees)},{SUFFIX}"
    tree = Tree(url=server.url, base=base, conn=conn)
    conn.add(base, ["organizationalUnit"], {"ou": base.split(",")[0][3:]})
    conn.add(tree.people, ["organizationalUnit"], {"ou": "people"})
    conn.add(tree.groups, ["organizationalUnit"], {"ou": "groups"})
    for uid, attrs in USERS.items():
        conn.add(tree.user(uid), ["inetOrgPerson", "shadowAccount"], {"uid": uid, **attrs})
    for cn, uids in GROUPS.items():
        conn.add(tree.group(cn), ["groupOfNames"], {"cn": cn, "member": [tree.user(u) for u in uids]})
    for gid, (cn, uids) in enumerate(POSIX_GROUPS.items(), start=5000):
        conn.add(tree.group(cn), ["posixGroup"], {"cn": cn, "gidNumber": str(gid), "memberUid": uids})
    return tree
