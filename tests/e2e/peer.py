"""Python huggingface_hub as the conformance peer of `cargo xtask e2e`.

Run by xtask with HF_ENDPOINT, HF_HUB_CACHE, HF_TOKEN, HF_HUB_DISABLE_XET=1 (and HF_HUB_OFFLINE=1
for offline checks) in the environment. Prints one JSON object on stdout.

  peer.py upload REPO DIR [--create-pr]      create_repo(exist_ok) + upload_folder
  peer.py snapshot REPO [--revision R] [--allow P]...
  peer.py file REPO PATH [--revision R]      hf_hub_download
  peer.py scan                               scan_cache_dir(): refs, snapshots, warnings
"""

import argparse
import json
import sys

import huggingface_hub
from huggingface_hub import HfApi, hf_hub_download, scan_cache_dir, snapshot_download


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upload")
    up.add_argument("repo")
    up.add_argument("dir")
    up.add_argument("--create-pr", action="store_true")
    snap = sub.add_parser("snapshot")
    snap.add_argument("repo")
    snap.add_argument("--revision", default=None)
    snap.add_argument("--allow", action="append", default=None)
    one = sub.add_parser("file")
    one.add_argument("repo")
    one.add_argument("path")
    one.add_argument("--revision", default=None)
    sub.add_parser("scan")
    args = parser.parse_args()

    out = {"huggingface_hub": huggingface_hub.__version__}
    if args.cmd == "upload":
        api = HfApi()
        api.create_repo(args.repo, exist_ok=True)
        info = api.upload_folder(
            repo_id=args.repo,
            folder_path=args.dir,
            commit_message="Upload from Python",
            create_pr=args.create_pr,
        )
        out.update(commit=info.oid, pr_url=info.pr_url)
    elif args.cmd == "snapshot":
        out["path"] = snapshot_download(args.repo, revision=args.revision, allow_patterns=args.allow)
    elif args.cmd == "file":
        out["path"] = hf_hub_download(args.repo, args.path, revision=args.revision)
    elif args.cmd == "scan":
        info = scan_cache_dir()
        out["warnings"] = [str(w) for w in info.warnings]
        out["repos"] = [
            {
                "repo_id": r.repo_id,
                "refs": sorted(r.refs),
                "revisions": sorted(rev.commit_hash for rev in r.revisions),
                "files": sorted(
                    str(f.file_path.relative_to(rev.snapshot_path)) for rev in r.revisions for f in rev.files
                ),
            }
            for r in info.repos
        ]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
