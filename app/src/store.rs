//! Document storage: one directory per user, crash-safe writes, in-memory index.
//!
//! Layout: `<data_dir>/<user_id>/<id>.bin` (bytes) and `<id>.json` (metadata). A document
//! exists once its `.json` exists; everything else is cleaned up at startup.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::future::Future;
use std::io::{self, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::cursor::Cursor;
use crate::validate::{is_valid_document_id, is_valid_user_id, new_document_id};

const TMP_PREFIX: &str = ".tmp-";

/// Metadata as stored in `<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocMeta {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub content_type: String,
    /// Nanoseconds since the Unix epoch; the listing sort key.
    pub created_ns: u64,
}

impl DocMeta {
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.created_ns)
    }

    fn key(&self) -> (Reverse<u64>, String) {
        (Reverse(self.created_ns), self.id.clone())
    }
}

#[derive(Default)]
struct UserDocs {
    by_id: HashMap<String, DocMeta>,
    /// Newest first, ties broken by id.
    order: BTreeSet<(Reverse<u64>, String)>,
}

#[derive(Default)]
struct Index {
    users: HashMap<String, UserDocs>,
    count: u64,
    bytes: u64,
}

impl Index {
    fn insert(&mut self, user_id: &str, meta: DocMeta) {
        let docs = self.users.entry(user_id.to_owned()).or_default();
        docs.order.insert(meta.key());
        self.count += 1;
        self.bytes += meta.size;
        if let Some(old) = docs.by_id.insert(meta.id.clone(), meta) {
            // Only reachable on a 128-bit id collision; keep the totals honest anyway.
            docs.order.remove(&old.key());
            self.count -= 1;
            self.bytes -= old.size;
        }
    }

    fn remove(&mut self, user_id: &str, id: &str) -> Option<DocMeta> {
        let docs = self.users.get_mut(user_id)?;
        let meta = docs.by_id.remove(id)?;
        docs.order.remove(&meta.key());
        self.count -= 1;
        self.bytes -= meta.size;
        Some(meta)
    }
}

/// Where upload bytes come from. Storage sees chunks, never HTTP framing
/// (`body::BodyChunks` adapts a request body).
pub trait ChunkSource {
    type Error: std::fmt::Display;
    /// The next chunk, `None` at the end.
    fn next_chunk(&mut self) -> impl Future<Output = Option<Result<Bytes, Self::Error>>> + Send;
}

/// In-memory chunks (tests, small internal writes).
impl ChunkSource for std::collections::VecDeque<Bytes> {
    type Error = std::convert::Infallible;
    async fn next_chunk(&mut self) -> Option<Result<Bytes, Self::Error>> {
        self.pop_front().map(Ok)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("body exceeds the upload limit")]
    TooLarge,
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error("request body stalled")]
    Timeout,
    #[error("storage error: {0}")]
    Io(#[from] io::Error),
}

/// Cheap to clone; all clones share the index.
#[derive(Clone)]
pub struct Store {
    root: Arc<PathBuf>,
    index: Arc<Mutex<Index>>,
}

/// What a startup scan found and did, for the startup log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub documents: u64,
    pub removed_temp: u64,
    pub removed_orphans: u64,
    pub skipped: u64,
}

impl Store {
    /// Creates `root` if needed and rebuilds the index from disk, removing leftovers of
    /// interrupted uploads. Blocking: call before serving or via spawn_blocking.
    pub fn open(root: &Path) -> io::Result<(Store, Recovery)> {
        fs::create_dir_all(root)?;
        let mut index = Index::default();
        let mut recovery = Recovery::default();
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            if entry.file_type()?.is_dir() && is_valid_user_id(&name) {
                scan_user_dir(&path, &name, &mut index, &mut recovery)?;
            } else if name.starts_with(TMP_PREFIX) && entry.file_type()?.is_file() {
                // e.g. a readiness probe interrupted by a crash.
                fs::remove_file(&path)?;
                recovery.removed_temp += 1;
            } else {
                tracing::warn!(path = %path.display(), "ignoring unexpected entry in data_dir");
            }
        }
        recovery.documents = index.count;
        let store = Store {
            root: Arc::new(root.to_owned()),
            index: Arc::new(Mutex::new(index)),
        };
        Ok((store, recovery))
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-updated in a way
        // that matters more than refusing all requests would, so recover from poisoning.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn user_dir(&self, user_id: &str) -> PathBuf {
        debug_assert!(is_valid_user_id(user_id));
        self.root.join(user_id)
    }

    /// (document count, total bytes) across all users.
    pub fn totals(&self) -> (u64, u64) {
        let index = self.lock();
        (index.count, index.bytes)
    }

    /// A page of `user_id`'s documents, newest first, strictly after `after`.
    /// Returns the page and whether more documents follow it.
    pub fn list(
        &self,
        user_id: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> (Vec<DocMeta>, bool) {
        let index = self.lock();
        let Some(docs) = index.users.get(user_id) else {
            return (Vec::new(), false);
        };
        let start = match after {
            Some(c) => Bound::Excluded((Reverse(c.created_ns), c.id.clone())),
            None => Bound::Unbounded,
        };
        let mut page: Vec<DocMeta> = docs
            .order
            .range((start, Bound::Unbounded))
            .take(limit + 1)
            .map(|(_, id)| docs.by_id[id].clone())
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    pub fn get(&self, user_id: &str, id: &str) -> Option<DocMeta> {
        if !is_valid_document_id(id) {
            return None;
        }
        self.lock().users.get(user_id)?.by_id.get(id).cloned()
    }

    /// Opens a document's bytes; `None` if it does not exist for this user (or was just deleted).
    pub async fn open_data(
        &self,
        user_id: &str,
        id: &str,
    ) -> io::Result<Option<(DocMeta, tokio::fs::File)>> {
        let Some(meta) = self.get(user_id, id) else {
            return Ok(None);
        };
        let path = self.user_dir(user_id).join(format!("{id}.bin"));
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Some((meta, file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Streams `chunks` to a temp file (aborting once it passes `max_bytes` or stalls for
    /// `idle`), then commits it as a new document.
    pub async fn put<S: ChunkSource + Send>(
        &self,
        user_id: &str,
        name: String,
        content_type: String,
        mut chunks: S,
        max_bytes: u64,
        idle: Duration,
    ) -> Result<DocMeta, PutError> {
        let dir = self.user_dir(user_id);
        ensure_dir(&self.root, &dir).await?;
        let tmp_path = dir.join(format!("{TMP_PREFIX}{:032x}", rand::random::<u128>()));
        // Removes the temp file on every early return, including when this future is dropped.
        let guard = TempGuard(Some(tmp_path.clone()));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .await?;
        let mut size: u64 = 0;
        loop {
            let chunk = match tokio::time::timeout(idle, chunks.next_chunk()).await {
                Err(_) => return Err(PutError::Timeout),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(PutError::Body(e.to_string())),
                Ok(Some(Ok(chunk))) => chunk,
            };
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(PutError::TooLarge);
            }
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        let file = file.into_std().await;
        let meta = DocMeta {
            id: new_document_id(),
            name,
            size,
            content_type,
            created_ns: now_ns(),
        };
        // The commit runs to completion on the blocking pool even if the client goes away,
        // so disk and index never disagree.
        let store = self.clone();
        let user_id = user_id.to_owned();
        let tmp = guard.disarm();
        let committed = meta.clone();
        tokio::task::spawn_blocking(move || store.commit(&user_id, file, &tmp, committed))
            .await
            .map_err(io::Error::other)??;
        Ok(meta)
    }

    fn commit(&self, user_id: &str, file: fs::File, tmp: &Path, meta: DocMeta) -> io::Result<()> {
        let dir = self.user_dir(user_id);
        let bin = dir.join(format!("{}.bin", meta.id));
        let json = dir.join(format!("{}.json", meta.id));
        let meta_tmp = dir.join(format!("{TMP_PREFIX}{:032x}", rand::random::<u128>()));
        let result = (|| {
            file.sync_all()?;
            drop(file);
            fs::rename(tmp, &bin)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&meta_tmp)?;
            f.write_all(&serde_json::to_vec(&meta).map_err(io::Error::other)?)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&meta_tmp, &json)?;
            fs::File::open(&dir)?.sync_all()
        })();
        match result {
            Ok(()) => {
                self.lock().insert(user_id, meta);
                Ok(())
            }
            Err(e) => {
                // Best effort; whatever is left is removed by the next startup scan.
                for p in [tmp, &meta_tmp, &json, &bin] {
                    let _ = fs::remove_file(p);
                }
                Err(e)
            }
        }
    }

    /// Deletes a document. `Ok(false)` if it does not exist for this user.
    pub async fn delete(&self, user_id: &str, id: &str) -> io::Result<bool> {
        if !is_valid_document_id(id) {
            return Ok(false);
        }
        // Leave the index first so concurrent deletes of one id cannot both succeed.
        let Some(meta) = self.lock().remove(user_id, id) else {
            return Ok(false);
        };
        let store = self.clone();
        let user_id = user_id.to_owned();
        tokio::task::spawn_blocking(move || {
            let dir = store.user_dir(&user_id);
            // Metadata first: once it is gone the document no longer exists, even if
            // removing the data fails (the orphan is swept at startup).
            match fs::remove_file(dir.join(format!("{}.json", meta.id))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    store.lock().insert(&user_id, meta);
                    return Err(e);
                }
            }
            if let Err(e) = fs::remove_file(dir.join(format!("{}.bin", meta.id))) {
                tracing::warn!(error = %e, "removing document data failed; left for startup cleanup");
            }
            if let Err(e) = fs::File::open(&dir).and_then(|d| d.sync_all()) {
                tracing::warn!(error = %e, "fsync of user directory failed after delete");
            }
            Ok(true)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Proves data_dir is writable by creating, syncing and removing a probe file.
    pub async fn probe_writable(&self) -> io::Result<()> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let probe = root.join(format!("{TMP_PREFIX}readyz-{:016x}", rand::random::<u64>()));
            let result = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
                .and_then(|mut f| f.write_all(b"ok"));
            let removed = fs::remove_file(&probe);
            result.and(removed)
        })
        .await
        .map_err(io::Error::other)?
    }
}

fn now_ns() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Creates a user's directory on first use and makes the new entry durable.
async fn ensure_dir(root: &Path, dir: &Path) -> io::Result<()> {
    match tokio::fs::create_dir(dir).await {
        Ok(()) => {
            let root = root.to_owned();
            tokio::task::spawn_blocking(move || fs::File::open(root)?.sync_all())
                .await
                .map_err(io::Error::other)?
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes a temp file when dropped unless disarmed.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) -> PathBuf {
        self.0.take().expect("armed guard")
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let remove = move || {
                let _ = fs::remove_file(path);
            };
            // Unlinking is quick, but keep it off the async threads when we can.
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn_blocking(remove)),
                Err(_) => remove(),
            }
        }
    }
}

fn scan_user_dir(
    dir: &Path,
    user_id: &str,
    index: &mut Index,
    recovery: &mut Recovery,
) -> io::Result<()> {
    let mut bins = Vec::new();
    let mut metas = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !entry.file_type()?.is_file() {
            tracing::warn!(path = %path.display(), "ignoring unexpected entry in user directory");
        } else if name.starts_with(TMP_PREFIX) {
            fs::remove_file(&path)?;
            recovery.removed_temp += 1;
        } else if let Some(id) = name
            .strip_suffix(".bin")
            .filter(|id| is_valid_document_id(id))
        {
            bins.push((id.to_owned(), path));
        } else if let Some(id) = name
            .strip_suffix(".json")
            .filter(|id| is_valid_document_id(id))
        {
            metas.push((id.to_owned(), path));
        } else {
            tracing::warn!(path = %path.display(), "ignoring unexpected file in user directory");
        }
    }
    let mut loaded = std::collections::HashSet::new();
    for (id, path) in metas {
        let bin_len = fs::metadata(dir.join(format!("{id}.bin")))
            .map(|m| m.len())
            .ok();
        let meta = fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<DocMeta>(&bytes).ok());
        match (meta, bin_len) {
            (Some(meta), Some(len)) if meta.id == id && meta.size == len => {
                index.insert(user_id, meta);
                loaded.insert(id);
            }
            (_, None) => {
                // Data gone (a delete interrupted between its two unlinks cannot cause this,
                // as metadata goes first), so the document cannot be served: drop it.
                tracing::warn!(path = %path.display(), "metadata without data; removing");
                fs::remove_file(&path)?;
                recovery.removed_orphans += 1;
            }
            _ => {
                // Corrupt or inconsistent: keep the files for an operator, do not serve them.
                tracing::error!(path = %path.display(), "unreadable or inconsistent metadata; skipping");
                recovery.skipped += 1;
                loaded.insert(id); // protect its data from the orphan sweep below
            }
        }
    }
    for (id, path) in bins {
        if !loaded.contains(&id) {
            // Data whose metadata never landed: an upload interrupted by a crash.
            fs::remove_file(&path)?;
            recovery.removed_orphans += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// The bytes in two chunks, so writes span chunk boundaries.
    fn body(bytes: &'static [u8]) -> VecDeque<Bytes> {
        let (a, b) = bytes.split_at(bytes.len() / 2);
        VecDeque::from([Bytes::from_static(a), Bytes::from_static(b)])
    }

    const IDLE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn put_list_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let a = store
            .put(
                "u1",
                "a".into(),
                "text/plain".into(),
                body(b"aaa"),
                10,
                IDLE,
            )
            .await
            .unwrap();
        let b = store
            .put("u1", "b".into(), "text/plain".into(), body(b"bb"), 10, IDLE)
            .await
            .unwrap();
        assert_eq!(store.totals(), (2, 5));
        let (page, more) = store.list("u1", None, 10);
        assert_eq!(
            page.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert!(!more);
        assert!(store.list("u2", None, 10).0.is_empty());
        assert_eq!(store.get("u2", &a.id), None, "other user");
        assert!(!store.delete("u2", &a.id).await.unwrap());

        let too_big = store
            .put(
                "u1",
                "c".into(),
                "x/y".into(),
                body(b"0123456789x"),
                10,
                IDLE,
            )
            .await;
        assert!(matches!(too_big, Err(PutError::TooLarge)));

        assert!(store.delete("u1", &a.id).await.unwrap());
        assert!(!store.delete("u1", &a.id).await.unwrap());
        drop(store);

        let (store, recovery) = Store::open(dir.path()).unwrap();
        assert_eq!(recovery.documents, 1);
        assert_eq!(store.get("u1", &b.id), Some(b));
        // Give the TempGuard's background unlink of the rejected upload a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("u1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn startup_sweeps_crash_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("u1");
        fs::create_dir_all(&user).unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let orphan = "ffffffffffffffffffffffffffffffff";
        let meta = DocMeta {
            id: id.into(),
            name: "ok".into(),
            size: 2,
            content_type: "text/plain".into(),
            created_ns: 1,
        };
        fs::write(user.join(format!("{id}.bin")), b"ok").unwrap();
        fs::write(
            user.join(format!("{id}.json")),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        fs::write(user.join(format!("{orphan}.bin")), b"partial").unwrap();
        fs::write(user.join(".tmp-abc"), b"partial").unwrap();
        fs::write(dir.path().join(".tmp-readyz-1"), b"").unwrap();
        let (store, recovery) = Store::open(dir.path()).unwrap();
        assert_eq!(
            recovery,
            Recovery {
                documents: 1,
                removed_temp: 2,
                removed_orphans: 1,
                skipped: 0
            }
        );
        assert_eq!(store.get("u1", id), Some(meta));
        assert!(!user.join(format!("{orphan}.bin")).exists());
        assert!(!user.join(".tmp-abc").exists());
    }
}
