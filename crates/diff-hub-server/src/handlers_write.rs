//! The write side of the Hub origin: create/delete repo, validate-yaml, preupload, LFS batch
//! and verify, and the NDJSON commit endpoint.

use crate::Shared;
use crate::handlers::{Reply, Req, check_read, check_write, error, json, repo_id, resolve_rev};
use crate::repo::{Entry, decide_lfs, lfs_entry, safe_component};
use crate::storage::is_sha256;
use base64::Engine;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const GITATTRIBUTES: &str = "*.bin filter=lfs diff=lfs merge=lfs -text\n\
*.ckpt filter=lfs diff=lfs merge=lfs -text\n\
*.h5 filter=lfs diff=lfs merge=lfs -text\n\
*.msgpack filter=lfs diff=lfs merge=lfs -text\n\
*.onnx filter=lfs diff=lfs merge=lfs -text\n\
*.pt filter=lfs diff=lfs merge=lfs -text\n\
*.pth filter=lfs diff=lfs merge=lfs -text\n\
*.safetensors filter=lfs diff=lfs merge=lfs -text\n";

fn namespace_and_name(body: &Value) -> Option<String> {
    let name = body.get("name")?.as_str()?;
    let org = body
        .get("organization")
        .and_then(Value::as_str)
        .unwrap_or("user");
    repo_id(org, name)
}

fn repo_type_ok(body: &Value) -> Result<(), Reply> {
    match body.get("type").and_then(Value::as_str) {
        None | Some("model") => Ok(()),
        Some(other) => Err(error(
            400,
            None,
            &format!("this test server only hosts models, not {other}s"),
        )),
    }
}

/// `POST /api/repos/create`.
pub(crate) fn create_repo(shared: &Shared, req: &mut Req) -> Reply {
    if let Err(reply) = check_write(shared, req) {
        return reply;
    }
    let body = match req.json(1 << 20) {
        Ok(v) => v,
        Err(reply) => return *reply,
    };
    if let Err(reply) = repo_type_ok(&body) {
        return reply;
    }
    let Some(id) = namespace_and_name(&body) else {
        return error(400, None, "create repo: `name` missing or invalid");
    };
    let url = format!("{}/{id}", shared.hub_url);
    let mut repos = shared.repos();
    if repos.exists(&id) {
        return json(
            409,
            &json!({"error": "You already created this model repo", "url": url}),
        )
        .header("X-Error-Message", "You already created this model repo");
    }
    let private = body
        .get("private")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || body.get("visibility").and_then(Value::as_str) == Some("private");
    let dir = repos.repo_dir(&id);
    if let Err(e) = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(dir.join(".gitattributes"), GITATTRIBUTES))
    {
        return error(500, None, &format!("creating {id}: {e}"));
    }
    let meta = repos.meta_mut(&id);
    *meta = Default::default();
    meta.private = private;
    repos.save();
    json(200, &json!({"url": url, "name": id, "id": id}))
}

/// `DELETE /api/repos/delete`.
pub(crate) fn delete_repo(shared: &Shared, req: &mut Req) -> Reply {
    if let Err(reply) = check_write(shared, req) {
        return reply;
    }
    let body = match req.json(1 << 20) {
        Ok(v) => v,
        Err(reply) => return *reply,
    };
    let Some(id) = namespace_and_name(&body) else {
        return error(400, None, "delete repo: `name` missing or invalid");
    };
    let mut repos = shared.repos();
    if !repos.exists(&id) {
        return error(
            404,
            Some("RepoNotFound"),
            &format!("Repository {id} not found"),
        );
    }
    match repos.delete(&id) {
        Ok(()) => json(200, &json!({})),
        Err(e) => error(500, None, &format!("deleting {id}: {e}")),
    }
}

/// `POST /api/validate-yaml`: accepts any card whose front matter is closed.
pub(crate) fn validate_yaml(req: &mut Req) -> Reply {
    let body = match req.json(10 << 20) {
        Ok(v) => v,
        Err(reply) => return *reply,
    };
    let content = body.get("content").and_then(Value::as_str).unwrap_or("");
    if let Some(rest) = content.strip_prefix("---\n")
        && !rest.contains("\n---")
        && !rest.starts_with("---")
    {
        return json(
            400,
            &json!({"errors": [{"message": "front matter is not closed"}], "warnings": []}),
        );
    }
    json(200, &json!({"errors": [], "warnings": []}))
}

fn current_files(
    shared: &Shared,
    id: &str,
    rev: &str,
) -> Result<(String, BTreeMap<String, Entry>), Reply> {
    let commit = resolve_rev(shared, id, rev)?;
    let files = shared
        .repos()
        .commit(id, &commit)
        .map(|c| c.files.clone())
        .unwrap_or_default();
    Ok((commit, files))
}

/// `POST /api/models/{repo}/preupload/{rev}`.
pub(crate) fn preupload(shared: &Shared, req: &mut Req, id: &str, rev: &str) -> Reply {
    if let Err(reply) = check_write(shared, req) {
        return reply;
    }
    let body = match req.json(64 << 20) {
        Ok(v) => v,
        Err(reply) => return *reply,
    };
    let (_, files) = match current_files(shared, id, rev) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let Some(list) = body.get("files").and_then(Value::as_array) else {
        return error(400, None, "preupload: `files` array missing");
    };
    let limit = shared.config.regular_file_limit;
    let mut out = Vec::new();
    for file in list {
        let (Some(path), Some(size)) = (
            file.get("path").and_then(Value::as_str),
            file.get("size").and_then(Value::as_u64),
        ) else {
            return error(400, None, "preupload: each file needs `path` and `size`");
        };
        let sample = file
            .get("sample")
            .and_then(Value::as_str)
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .unwrap_or_default();
        let lfs = decide_lfs(path, &sample, size, limit);
        let oid = files.get(path).filter(|e| e.lfs == lfs).map(|e| {
            if e.lfs {
                e.sha256.clone()
            } else {
                e.oid.clone()
            }
        });
        out.push(json!({
            "path": path,
            "uploadMode": if lfs { "lfs" } else { "regular" },
            "shouldIgnore": path.starts_with(".git/"),
            "oid": oid,
        }));
    }
    json(200, &json!({"files": out, "commitOid": Value::Null}))
}

/// `POST /{repo}.git/info/lfs/objects/batch`.
pub(crate) fn lfs_batch(shared: &Shared, req: &mut Req, id: &str) -> Reply {
    let body = match req.json(64 << 20) {
        Ok(v) => v,
        Err(reply) => return *reply,
    };
    let operation = body.get("operation").and_then(Value::as_str).unwrap_or("");
    if operation == "upload" {
        if let Err(reply) = check_write(shared, req) {
            return reply;
        }
    } else if operation != "download" {
        return error(
            400,
            None,
            &format!("LFS batch: unknown operation `{operation}`"),
        );
    }
    let transfers: Vec<&str> = body
        .get("transfers")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_else(|| vec!["basic"]);
    let chunk = shared.config.multipart_chunk_size.max(1);
    let multipart_ok = transfers.contains(&"multipart");
    let mut used_multipart = false;
    let mut objects = Vec::new();
    let repos = shared.repos();
    for object in body
        .get("objects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let oid = object.get("oid").and_then(Value::as_str).unwrap_or("");
        let Some(size) = object.get("size").and_then(Value::as_u64) else {
            objects.push(json!({"oid": oid, "error": {"code": 422, "message": "size missing"}}));
            continue;
        };
        if !is_sha256(oid) {
            objects.push(json!({"oid": oid, "size": size, "error": {"code": 422, "message": "oid must be a lower-case sha256"}}));
            continue;
        }
        if operation == "download" {
            if repos.object_size(oid) == Some(size) {
                objects.push(json!({"oid": oid, "size": size, "actions": {"download": {"href": format!("{}/lfs/{oid}", shared.storage_url)}}}));
            } else {
                objects.push(json!({"oid": oid, "size": size, "error": {"code": 404, "message": "Object does not exist"}}));
            }
            continue;
        }
        if repos.object_size(oid) == Some(size) {
            objects.push(json!({"oid": oid, "size": size}));
            continue;
        }
        let base = format!("{}/upload/{oid}/{size}", shared.storage_url);
        let verify = json!({"href": format!("{}/{id}.git/info/lfs/objects/verify", shared.hub_url), "header": {}});
        if multipart_ok && size > chunk {
            used_multipart = true;
            let parts = size.div_ceil(chunk);
            let mut header = serde_json::Map::new();
            header.insert("chunk_size".into(), json!(chunk.to_string()));
            for n in 1..=parts {
                header.insert(format!("{n}"), json!(format!("{base}/part/{n}")));
            }
            objects.push(json!({"oid": oid, "size": size, "authenticated": true, "actions": {
                "upload": {"href": format!("{base}/complete"), "header": header, "expires_in": 86400},
                "verify": verify}}));
        } else {
            objects.push(
                json!({"oid": oid, "size": size, "authenticated": true, "actions": {
                "upload": {"href": base, "header": {}, "expires_in": 86400},
                "verify": verify}}),
            );
        }
    }
    let transfer = if used_multipart { "multipart" } else { "basic" };
    let mut reply = json(
        200,
        &json!({"transfer": transfer, "objects": objects, "hash_algo": "sha256"}),
    );
    for (name, value) in &mut reply.headers {
        if name == "Content-Type" {
            *value = "application/vnd.git-lfs+json".into();
        }
    }
    reply
}

/// `POST /{repo}.git/info/lfs/objects/verify`.
pub(crate) fn lfs_verify(shared: &Shared, req: &mut Req, _id: &str) -> Reply {
    if let Err(reply) = check_write(shared, req) {
        return reply;
    }
    let body = match req.json(1 << 20) {
        Ok(v) => v,
        Err(reply) => return *reply,
    };
    let oid = body.get("oid").and_then(Value::as_str).unwrap_or("");
    let size = body.get("size").and_then(Value::as_u64);
    match (shared.repos().object_size(oid), size) {
        (Some(have), Some(want)) if have == want => {
            json(200, &json!({"message": "Object verified"}))
        }
        (Some(have), want) => error(
            422,
            None,
            &format!("object {oid} has {have} bytes, verify asked {want:?}"),
        ),
        (None, _) => error(404, None, &format!("object {oid} was never uploaded")),
    }
}

/// One parsed NDJSON operation.
enum Op {
    Add {
        path: String,
        bytes: Vec<u8>,
    },
    AddLfs {
        path: String,
        oid: String,
        size: Option<u64>,
    },
    Delete {
        path: String,
    },
    DeleteFolder {
        path: String,
    },
}

fn valid_path(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && path.split('/').all(safe_component)
}

fn parse_commit(body: &[u8]) -> Result<(Value, Vec<Op>), String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("commit body is not UTF-8: {e}"))?;
    let lines: Vec<Value> = if text.trim_start().starts_with('[')
        || text.trim_start().starts_with("{\"summary")
    {
        return Err("JSON (non-NDJSON) commit payloads are not supported by this server".into());
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("bad NDJSON line: {e}")))
            .collect::<Result<_, _>>()?
    };
    let mut header = None;
    let mut ops = Vec::new();
    for line in lines {
        let key = line.get("key").and_then(Value::as_str).unwrap_or("");
        let value = line.get("value").cloned().unwrap_or(Value::Null);
        let path = value
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if key != "header" && !valid_path(path.trim_end_matches('/')) {
            return Err(format!("invalid path `{path}` in `{key}` operation"));
        }
        match key {
            "header" => header = Some(value),
            "file" => {
                let content = value.get("content").and_then(Value::as_str).unwrap_or("");
                let bytes = match value.get("encoding").and_then(Value::as_str) {
                    Some("base64") => base64::engine::general_purpose::STANDARD
                        .decode(content)
                        .map_err(|e| format!("{path}: bad base64: {e}"))?,
                    _ => content.as_bytes().to_vec(),
                };
                ops.push(Op::Add { path, bytes });
            }
            "lfsFile" => {
                let oid = value
                    .get("oid")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let size = value.get("size").and_then(Value::as_u64);
                ops.push(Op::AddLfs { path, oid, size });
            }
            "deletedFile" => ops.push(Op::Delete { path }),
            "deletedFolder" => ops.push(Op::DeleteFolder { path }),
            other => return Err(format!("unknown commit operation `{other}`")),
        }
    }
    let header = header.ok_or("commit has no header line")?;
    Ok((header, ops))
}

/// `POST /api/models/{repo}/commit/{rev}[?create_pr=1]`.
pub(crate) fn commit(shared: &Shared, req: &mut Req, id: &str, rev: &str) -> Reply {
    if let Err(reply) = check_write(shared, req) {
        return reply;
    }
    if let Err(reply) = check_read(shared, req, id) {
        return reply;
    }
    let body = match req.body(1 << 30) {
        Ok(b) => b,
        Err(e) => return error(400, None, &format!("reading commit body: {e}")),
    };
    let (header, ops) = match parse_commit(&body) {
        Ok(v) => v,
        Err(message) => return error(400, None, &message),
    };
    let create_pr = req.flag("create_pr");
    if !create_pr && rev != "main" && !rev.starts_with("refs/pr/") && rev.len() == 40 {
        return error(
            400,
            None,
            &format!("cannot commit to a commit id ({rev}); name a branch"),
        );
    }
    let (head, mut files) = match current_files(shared, id, rev) {
        Ok(v) => v,
        Err(reply) => return reply,
    };
    let parent = header.get("parentCommit").and_then(Value::as_str);
    if let Some(parent) = parent
        && parent != head
        && !create_pr
    {
        return error(
            412,
            None,
            &format!(
                "A commit has happened since. Please refresh and try again. (parent {parent}, head {head})"
            ),
        );
    }
    let limit = shared.config.regular_file_limit;
    let repos = shared.repos();
    let mut new_lfs_paths = Vec::new();
    for op in ops {
        match op {
            Op::Add { path, bytes } => {
                if bytes.len() as u64 > limit {
                    return error(
                        400,
                        None,
                        &format!("{path}: regular files above {limit} bytes must use LFS"),
                    );
                }
                let lfs = false;
                match repos.store_object(&path, &bytes, lfs) {
                    Ok(entry) => {
                        files.insert(path, entry);
                    }
                    Err(e) => return error(500, None, &format!("storing {path}: {e}")),
                }
            }
            Op::AddLfs { path, oid, size } => {
                let known = repos
                    .object_size(&oid)
                    .or_else(|| files.values().find(|e| e.sha256 == oid).map(|e| e.size));
                match known {
                    Some(have) if size.is_none_or(|s| s == have) => {
                        if !crate::repo::is_lfs_path(&path) {
                            new_lfs_paths.push(path.clone());
                        }
                        files.insert(path, lfs_entry(&oid, have));
                    }
                    _ => {
                        return error(
                            400,
                            None,
                            &format!("{path}: LFS object {oid} was not uploaded"),
                        );
                    }
                }
            }
            Op::Delete { path } => {
                if files.remove(&path).is_none() {
                    return error(
                        404,
                        Some("EntryNotFound"),
                        &format!("{path} does not exist in {rev}"),
                    );
                }
            }
            Op::DeleteFolder { path } => {
                let prefix = format!("{}/", path.trim_end_matches('/'));
                let before = files.len();
                files.retain(|p, _| !p.starts_with(&prefix));
                if files.len() == before {
                    return error(
                        404,
                        Some("EntryNotFound"),
                        &format!("folder {path} does not exist in {rev}"),
                    );
                }
            }
        }
    }
    // Like the Hub, track LFS paths that the default patterns do not cover in `.gitattributes`.
    if !new_lfs_paths.is_empty() {
        let mut text = files
            .get(".gitattributes")
            .and_then(|e| std::fs::read(repos.file_path(id, ".gitattributes", e)).ok())
            .unwrap_or_default();
        let before = text.len();
        for path in new_lfs_paths {
            let line = format!(
                "{} filter=lfs diff=lfs merge=lfs -text\n",
                path.replace(' ', "\\ ")
            );
            if !String::from_utf8_lossy(&text)
                .lines()
                .any(|l| format!("{l}\n") == line)
            {
                if !text.is_empty() && !text.ends_with(b"\n") {
                    text.push(b'\n');
                }
                text.extend_from_slice(line.as_bytes());
            }
        }
        if text.len() != before {
            match repos.store_object(".gitattributes", &text, false) {
                Ok(entry) => {
                    files.insert(".gitattributes".into(), entry);
                }
                Err(e) => return error(500, None, &format!("updating .gitattributes: {e}")),
            }
        }
    }
    drop(repos);
    // Objects written by the folder scan are referenced in place: copy them so the new listing
    // only points into the object store.
    let summary = header
        .get("summary")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut repos = shared.repos();
    if let Err(e) = repos.materialise(id, &head) {
        return error(500, None, &format!("keeping {head}: {e}"));
    }
    for (path, entry) in files.iter_mut() {
        if entry.source == crate::repo::Source::Folder {
            let bytes = match std::fs::read(repos.repo_dir(id).join(path)) {
                Ok(b) => b,
                Err(e) => return error(500, None, &format!("reading {path}: {e}")),
            };
            let lfs = entry.lfs;
            match repos.store_object(path, &bytes, lfs) {
                Ok(e) => *entry = e,
                Err(e) => return error(500, None, &format!("storing {path}: {e}")),
            }
        }
    }
    let url = format!("{}/{id}", shared.hub_url);
    if create_pr {
        let base = parent.map(str::to_string).unwrap_or(head);
        let meta = repos.meta_mut(id);
        meta.next_pr += 1;
        let number = meta.next_pr;
        let commit = repos.add_commit(id, files, Some(base), summary);
        repos
            .meta_mut(id)
            .refs
            .insert(format!("refs/pr/{number}"), commit.clone());
        repos.save();
        return json(
            200,
            &json!({
            "success": true, "commitOid": commit, "commitUrl": format!("{url}/commit/{commit}"),
            "hookOutput": "", "pullRequestUrl": format!("{url}/discussions/{number}")}),
        );
    }
    let commit = if rev == "main" {
        match repos.write_main(id, &files) {
            Ok(c) => c,
            Err(e) => return error(500, None, &format!("writing {id}: {e}")),
        }
    } else {
        let commit = repos.add_commit(id, files, Some(head), summary);
        repos
            .meta_mut(id)
            .refs
            .insert(rev.to_string(), commit.clone());
        commit
    };
    repos.save();
    json(
        200,
        &json!({
        "success": true, "commitOid": commit, "commitUrl": format!("{url}/commit/{commit}"), "hookOutput": ""}),
    )
}
