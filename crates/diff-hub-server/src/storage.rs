//! The storage origin: LFS bytes for downloads (with `Range`), presigned-style upload URLs
//! (basic PUT and multipart parts plus completion). It never looks at `Authorization`.

use crate::handlers::{Reply, Req, error, json, send_file};
use crate::repo::sha256_hex;
use crate::{Fault, Shared};
use serde_json::json;
use std::path::PathBuf;

/// Routes a request on the storage origin.
pub(crate) fn route(shared: &Shared, req: &mut Req, fault: Option<&Fault>) -> Reply {
    let segs: Vec<String> = req.segments.clone();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET" | "HEAD", ["lfs", oid]) => {
            let found = if is_sha256(oid) {
                shared.repos().lfs_file(oid)
            } else {
                None
            };
            let Some(path) = found else {
                return error(
                    404,
                    Some("EntryNotFound"),
                    &format!("object {oid} not found"),
                );
            };
            send_file(
                shared,
                req,
                &path,
                vec![("ETag", format!("\"{oid}\""))],
                fault,
            )
        }
        ("PUT", ["upload", oid, size]) => put_basic(shared, req, oid, size),
        ("PUT", ["upload", oid, size, "part", n]) => put_part(shared, req, oid, size, n),
        ("POST", ["upload", oid, size, "complete"]) => complete(shared, req, oid, size),
        _ => error(
            404,
            None,
            &format!("no storage route for {} {}", req.method, req.url),
        ),
    }
}

pub(crate) fn is_sha256(oid: &str) -> bool {
    oid.len() == 64
        && oid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn parse_size(size: &str) -> Option<u64> {
    size.parse().ok()
}

fn store_verified(shared: &Shared, oid: &str, size: u64, bytes: &[u8]) -> Reply {
    if bytes.len() as u64 != size {
        return error(
            400,
            None,
            &format!("object {oid}: expected {size} bytes, got {}", bytes.len()),
        );
    }
    let got = sha256_hex(bytes);
    if got != oid {
        return error(400, None, &format!("object {oid}: content hashes to {got}"));
    }
    let repos = shared.repos();
    match repos.store_object(oid, bytes, true) {
        Ok(_) => Reply::empty(200).header("ETag", format!("\"{oid}\"")),
        Err(e) => error(500, None, &format!("storing {oid}: {e}")),
    }
}

fn put_basic(shared: &Shared, req: &mut Req, oid: &str, size: &str) -> Reply {
    let (Some(size), true) = (parse_size(size), is_sha256(oid)) else {
        return error(400, None, "bad upload URL");
    };
    match req.body(size.saturating_add(1)) {
        Ok(bytes) => store_verified(shared, oid, size, &bytes),
        Err(e) => error(400, None, &format!("reading upload body: {e}")),
    }
}

fn parts_dir(shared: &Shared, oid: &str) -> PathBuf {
    shared.repos().objects_dir().join("parts").join(oid)
}

fn put_part(shared: &Shared, req: &mut Req, oid: &str, size: &str, n: &str) -> Reply {
    let (Some(size), Ok(n), true) = (parse_size(size), n.parse::<u32>(), is_sha256(oid)) else {
        return error(400, None, "bad part URL");
    };
    let chunk = shared.config.multipart_chunk_size;
    let bytes = match req.body(chunk.saturating_add(1).min(size.saturating_add(1))) {
        Ok(bytes) => bytes,
        Err(e) => return error(400, None, &format!("reading part body: {e}")),
    };
    if bytes.len() as u64 > chunk {
        return error(
            400,
            None,
            &format!("part {n} is larger than the chunk size {chunk}"),
        );
    }
    let dir = parts_dir(shared, oid);
    let etag = sha256_hex(&bytes);
    let result = std::fs::create_dir_all(&dir).and_then(|_| {
        let tmp = dir.join(format!("{n}.hub-tmp"));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, dir.join(n.to_string()))
    });
    match result {
        Ok(()) => Reply::empty(200).header("ETag", format!("\"{etag}\"")),
        Err(e) => error(500, None, &format!("storing part {n} of {oid}: {e}")),
    }
}

fn complete(shared: &Shared, req: &mut Req, oid: &str, size: &str) -> Reply {
    let (Some(size), true) = (parse_size(size), is_sha256(oid)) else {
        return error(400, None, "bad completion URL");
    };
    let body: serde_json::Value = match req.json(1 << 20) {
        Ok(v) => v,
        Err(reply) => return *reply,
    };
    if body.get("oid").and_then(|v| v.as_str()) != Some(oid) {
        return error(
            400,
            None,
            &format!("completion body names another oid than {oid}"),
        );
    }
    let Some(parts) = body.get("parts").and_then(|p| p.as_array()) else {
        return error(400, None, "completion body has no `parts` array");
    };
    let dir = parts_dir(shared, oid);
    let mut bytes = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        let number = part.get("partNumber").and_then(|n| n.as_u64());
        let etag = part
            .get("etag")
            .and_then(|e| e.as_str())
            .unwrap_or_default();
        if number != Some(index as u64 + 1) {
            return error(400, None, &format!("part {} is out of order", index + 1));
        }
        let Ok(chunk) = std::fs::read(dir.join((index + 1).to_string())) else {
            return error(
                400,
                None,
                &format!("part {} of {oid} was never uploaded", index + 1),
            );
        };
        if etag.trim_matches('"') != sha256_hex(&chunk) {
            return error(400, None, &format!("part {} etag mismatch", index + 1));
        }
        bytes.extend_from_slice(&chunk);
    }
    let reply = store_verified(shared, oid, size, &bytes);
    let _ = std::fs::remove_dir_all(&dir);
    if reply.status == 200 {
        json(200, &json!({"oid": oid, "size": size}))
    } else {
        reply
    }
}
