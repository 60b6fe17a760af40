//! Model offload on the CPU device: the mechanism behind diffusers'
//! `enable_model_cpu_offload`, for a device whose "host" and "accelerator" memory are the same.
//!
//! A model loaded with [`crate::weights::LoadOptions::map_weights`] keeps its float parameters
//! in the memory-mapped weight files (no copy; the values are the file's bytes, so results are
//! bit for bit those of a copied load). Its pages become resident when a forward reads them and
//! are dropped again by [`MappedWeights::release`] (`MADV_DONTNEED`: the next read faults them
//! back in from the page cache or the file).
//!
//! An [`OffloadSequence`] lists the models of one pipeline in diffusers'
//! `model_cpu_offload_seq` order. Each model's entry point (`forward`, `encode`, `decode`) calls
//! [`enter`], the hook: when a model of a registered sequence starts, the model of that
//! sequence that ran before it is released, as accelerate's `cpu_offload_with_hook` chain
//! offloads the previous model when the next one's forward begins. So the resident weights are
//! about the largest model's instead of the sum. This module knows nothing of pipelines.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use memmap2::Mmap;

/// The process-wide default of [`crate::ModelLoadOptions::map_weights`] (off).
static MAP_WEIGHTS_DEFAULT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Makes every later [`crate::ModelLoadOptions::new`] leave float parameters in the mapped
/// files (`true`), as a program that will enable model offload wants from the first load: the
/// weights are then never copied, so loading does not raise the peak either.
pub fn set_map_weights_default(on: bool) {
    MAP_WEIGHTS_DEFAULT.store(on, Ordering::Relaxed);
}

/// The current default set by [`set_map_weights_default`].
pub fn map_weights_default() -> bool {
    MAP_WEIGHTS_DEFAULT.load(Ordering::Relaxed)
}

/// The memory-mapped weight files of one model (empty for a model whose weights were copied).
#[derive(Clone, Default)]
pub struct MappedWeights {
    maps: Vec<Arc<Mmap>>,
}

impl std::fmt::Debug for MappedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedWeights")
            .field("files", &self.maps.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl MappedWeights {
    pub(crate) fn new(maps: Vec<Arc<Mmap>>) -> Self {
        Self { maps }
    }

    /// True when no file is mapped.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Total mapped bytes.
    pub fn bytes(&self) -> usize {
        self.maps.iter().map(|m| m.len()).sum()
    }

    /// Adds the mappings of `other` (a model loaded from several sources).
    pub fn extend(&mut self, other: MappedWeights) {
        for m in other.maps {
            if !self.maps.iter().any(|k| Arc::ptr_eq(k, &m)) {
                self.maps.push(m);
            }
        }
    }

    /// Drops the model's resident pages from this process; the next read faults them back in
    /// with the same contents.
    pub fn release(&self) {
        for m in &self.maps {
            release_mapping(m);
        }
    }
}

#[cfg(unix)]
fn release_mapping(mmap: &Mmap) {
    // SAFETY: a read-only, private, file-backed mapping: MADV_DONTNEED only drops clean pages,
    // and later reads of live references fault the same bytes back in from the file (which is
    // treated as immutable while mapped, as the loader already assumes).
    let _ = unsafe { mmap.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
}

#[cfg(not(unix))]
fn release_mapping(_mmap: &Mmap) {}

/// One model of a sequence: its name, its address (the hook's key) and its weights.
#[derive(Debug)]
struct Member {
    name: String,
    address: usize,
    weights: MappedWeights,
}

/// The models of one pipeline in offload order; starting one releases the one that ran before.
#[derive(Debug)]
pub struct OffloadSequence {
    members: Vec<Member>,
    /// Index of the model that ran last.
    active: Mutex<Option<usize>>,
}

/// Live sequences, for the hook. A count keeps the hook free when offload is not in use.
static SEQUENCES: Mutex<Vec<Weak<OffloadSequence>>> = Mutex::new(Vec::new());
static LIVE: AtomicUsize = AtomicUsize::new(0);

impl OffloadSequence {
    /// A sequence of `(name, model, weights)` in offload order, registered with the hook for as
    /// long as the returned `Arc` lives. `model` is the model's address (`Arc::as_ptr`), the
    /// one its entry points pass to [`enter`].
    pub fn register(members: Vec<(String, *const (), MappedWeights)>) -> Arc<Self> {
        let seq = Arc::new(Self {
            members: members
                .into_iter()
                .map(|(name, address, weights)| Member {
                    name,
                    address: address as usize,
                    weights,
                })
                .collect(),
            active: Mutex::new(None),
        });
        let mut all = SEQUENCES.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&seq));
        LIVE.store(all.len(), Ordering::Release);
        seq
    }

    /// The names in order.
    pub fn names(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.name.as_str()).collect()
    }

    /// The mapped weights of the member called `name`.
    pub fn weights(&self, name: &str) -> Option<&MappedWeights> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .map(|m| &m.weights)
    }

    /// The mapped weights of the member at `address`, if any.
    pub fn weights_at(&self, address: *const ()) -> Option<&MappedWeights> {
        self.members
            .iter()
            .find(|m| m.address == address as usize)
            .map(|m| &m.weights)
    }

    /// Marks the member at `address` as running, releasing the one that ran before it.
    fn activate(&self, address: usize) {
        let Some(index) = self.members.iter().position(|m| m.address == address) else {
            return;
        };
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(prev) = *active
            && prev != index
        {
            tracing::debug!(
                released = %self.members[prev].name,
                starting = %self.members[index].name,
                "model offload"
            );
            self.members[prev].weights.release();
        }
        *active = Some(index);
    }

    /// Releases every member (diffusers' `maybe_free_model_hooks` at the end of a call).
    pub fn release_all(&self) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        for m in &self.members {
            m.weights.release();
        }
        *active = None;
    }
}

impl Drop for OffloadSequence {
    fn drop(&mut self) {
        let mut all = SEQUENCES.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        LIVE.store(all.len(), Ordering::Release);
    }
}

/// The hook at a model's entry point: in every registered sequence holding `model`, releases
/// the model that ran before it. Free when no sequence is registered.
pub(crate) fn enter<T>(model: &T) {
    if LIVE.load(Ordering::Acquire) == 0 {
        return;
    }
    let address = model as *const T as usize;
    let live: Vec<Arc<OffloadSequence>> = SEQUENCES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for seq in live {
        seq.activate(address);
    }
}
