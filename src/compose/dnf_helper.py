# cosa's bridge to dnf: depsolve and install into an installroot, driven by a JSON
# request on argv[1], answering JSON on stdout. Run with the system python3 (where
# the dnf module lives). It uses dnf's own API so depsolving, repo pinning,
# excludes, version locks and weak-deps follow dnf exactly.
#
# Request: {"mode": "resolve"|"install", "installroot", "reposdir", "cachedir",
#   "releasever", "basearch", "packages": [...], "exclude": [...],
#   "repo_packages": [{"repo", "packages": [...]}], "recommends": bool,
#   "documentation": bool, "locked": {"name": {"evr", "arch"?}}, "dbpath": "/usr/lib/sysimage/rpm"}
import json
import os
import sys

import dnf
import dnf.exceptions
import hawkey
import rpm


def fail(msg):
    json.dump({"error": msg}, sys.stdout)
    sys.stdout.write("\n")
    sys.exit(1)


def main():
    with open(sys.argv[1]) as f:
        req = json.load(f)
    # Where an OSTree system keeps its rpmdb; Debian's rpm defaults to ~/.rpmdb.
    rpm.addMacro("_dbpath", req["dbpath"])
    base = dnf.Base()
    conf = base.conf
    conf.installroot = req["installroot"]
    conf.cachedir = req["cachedir"]
    # dnf's own logs go to our scratch dir, never the host's /var/log.
    os.makedirs(req["logdir"], exist_ok=True)
    conf.logdir = req["logdir"]
    # Likewise its history database (the tree's /var is dropped anyway).
    conf.persistdir = os.path.join(req["logdir"], "persist")
    conf.reposdir = [req["reposdir"]]
    conf.config_file_path = "/dev/null"
    conf.substitutions["releasever"] = req["releasever"]
    conf.substitutions["basearch"] = req["basearch"]
    conf.install_weak_deps = bool(req["recommends"])
    # Always ask the server whether repomd.xml changed: a stale cache must not hide
    # a new package. Unchanged metadata is not downloaded again.
    conf.metadata_expire = 0
    conf.keepcache = True
    conf.assumeyes = True
    conf.gpgcheck = False
    conf.tsflags = [] if req["documentation"] else ["nodocs"]
    conf.exclude = list(req["exclude"])
    try:
        base.read_all_repos()
        for repo in base.repos.iter_enabled():
            repo.metadata_expire = 0
        base.fill_sack(load_system_repo=False)
    except dnf.exceptions.Error as e:
        fail("loading repositories: %s" % e)

    # Version locks (manifest-lock.<arch>.json): hide every other build of a
    # locked package name, so the depsolve can only pick the locked one.
    for name, lock in sorted(req["locked"].items()):
        q = base.sack.query().filter(name=name)
        keep = q.filter(evr=lock["evr"])
        if lock.get("arch"):
            keep = keep.filter(arch=lock["arch"])
        if not keep:
            fail("locked package %s-%s is not in any repository" % (name, lock["evr"]))
        base.sack.add_excludes(q.difference(keep))

    pinned = {}
    for rp in req["repo_packages"]:
        for spec in rp["packages"]:
            pinned[spec] = rp["repo"]
    try:
        for spec in req["packages"]:
            base.install(spec, reponame=pinned.get(spec))
        for spec, repo in pinned.items():
            if spec not in req["packages"]:
                base.install(spec, reponame=repo)
    except dnf.exceptions.MarkingError as e:
        fail("no package matches %s" % (e.pkg_spec or e))
    except dnf.exceptions.Error as e:
        fail(str(e))
    try:
        base.resolve()
    except dnf.exceptions.DepsolveError as e:
        fail("depsolve: %s" % e)

    pkgs = []
    for p in base.transaction.install_set:
        ck = p.chksum
        pkgs.append({
            "name": p.name, "epoch": p.epoch, "version": p.version,
            "release": p.release, "arch": p.arch, "repo": p.reponame,
            "checksum": ("%s:%s" % (hawkey.chksum_name(ck[0]), ck[1].hex())) if ck else "",
            "size": p.downloadsize,
        })
    pkgs.sort(key=lambda x: (x["name"], x["arch"]))
    if req["mode"] == "install":
        try:
            base.download_packages(list(base.transaction.install_set))
            base.do_transaction()
        except dnf.exceptions.Error as e:
            fail("installing: %s" % e)
    json.dump({"packages": pkgs}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # one line for the caller, never a traceback
        fail("%s: %s" % (type(e).__name__, e))
