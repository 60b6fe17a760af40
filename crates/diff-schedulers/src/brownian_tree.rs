//! torchsde's `BrownianInterval`, as diffusers' `BrownianTreeNoiseSampler` uses it for
//! `DPMSolverSDEScheduler`, reproduced bit for bit in float32.
//!
//! diffusers builds `torchsde.BrownianInterval(t0=σ_min, t1=σ_max, size=sample.shape,
//! entropy=seed, tol=1e-6, pool_size=24, halfway_tree=True)` with torchsde's defaults for the
//! rest (`cache_size=45`, `levy_area_approximation="none"`, `dt=None`). With those options the
//! Brownian path is a fixed function of the seed:
//!
//! - Times are quantised with Python's `round(x, 6)` (`tol = 1e-6`), and every node of the
//!   dyadic tree over [round(t0), round(t1)] splits at `round(½(start + end), 6)`.
//! - Each node's noise seed comes from numpy's `SeedSequence(entropy, spawn_key=(key, depth),
//!   pool_size=24).generate_state(4)[0]` (the root: no spawn key, `generate_state(3)[0]`), and
//!   a node's noise is `torch.randn(size, generator=torch.Generator().manual_seed(seed))`.
//! - The root increment is `randn(root seed) · √(t1 − t0)` (the unrounded times); a child's is
//!   the Brownian bridge `mean + √var · noise(parent)`, `mean = (l · W) · (1/h)`,
//!   `var = l·r/h` (left child; the right one is `W − left`), in float32 with the float64
//!   coefficients rounded to float32 as torch does for a Python scalar.
//! - A query [ta, tb] is the sum, left to right, of the increments of the maximal tree nodes
//!   that cover it, which with the halfway tree does not depend on the order of earlier
//!   queries. torchsde's LRU cache (45 entries) only avoids recomputation: the values are the
//!   same with or without it. Here an LRU cache of 45 to 128 node increments (up to 64 MiB)
//!   plays that role; the larger size keeps the paths of consecutive queries (2.5x faster).
//!
//! Only the parts diffusers reaches are implemented: no Lévy area, no `dt` dependency tree
//! (that belongs to `halfway_tree=False`), float32 only.

use crate::{NoiseDtype, SchedulerError, TorchGenerator};

/// numpy's `SeedSequence` pool mixing constants (`numpy/random/bit_generator.pyx`).
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// diffusers' `tol=1e-6`: times are rounded to 6 decimal digits.
const ROUND_DIGITS: usize = 6;
/// diffusers' `pool_size=24`.
pub const POOL_SIZE: usize = 24;
/// How many node increments are cached, at least: torchsde's default `cache_size=45`.
const MIN_CACHE_ENTRIES: usize = 45;
/// At most this many: enough to hold the two root-to-leaf paths of consecutive queries
/// (measured: 2.5x faster than 45 entries over the queries of a 25-step loop on a
/// [4, 64, 64] sample).
const MAX_CACHE_ENTRIES: usize = 128;
/// The memory the cache may take where that allows more than the minimum.
const CACHE_BYTES: usize = 64 << 20;
/// A bound on the tree depth: a 6-digit grid over any float32 σ range is reached long before;
/// deeper means a query that the quantisation cannot resolve (torchsde would recurse forever).
const MAX_DEPTH: u32 = 120;

/// An integer as numpy's `_coerce_to_uint32_array` splits it: 32-bit words, least significant
/// first, `[0]` for zero.
fn uint32_words(mut value: u128) -> Vec<u32> {
    if value == 0 {
        return vec![0];
    }
    let mut out = Vec::new();
    while value > 0 {
        out.push((value & 0xffff_ffff) as u32);
        value >>= 32;
    }
    out
}

/// `numpy.random.SeedSequence(entropy, spawn_key, pool_size).generate_state(n_words)` (uint32).
/// numpy rejects a `pool_size` under 4; here it is raised to 4.
pub fn seed_sequence_state(
    entropy: u128,
    spawn_key: &[u128],
    pool_size: usize,
    n_words: usize,
) -> Vec<u32> {
    let pool_size = pool_size.max(4);
    let mut run = uint32_words(entropy);
    let spawn: Vec<u32> = spawn_key.iter().flat_map(|k| uint32_words(*k)).collect();
    // numpy pads the run entropy to the pool size when a spawn key follows, so that a spawned
    // sequence never collides with a plain one.
    if !spawn.is_empty() && run.len() < pool_size {
        run.resize(pool_size, 0);
    }
    let entropy_array: Vec<u32> = run.into_iter().chain(spawn).collect();

    let mut hash_const = INIT_A;
    let mut hashmix = |value: u32| -> u32 {
        let mut v = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_A);
        v = v.wrapping_mul(hash_const);
        v ^ (v >> XSHIFT)
    };
    let mix = |x: u32, y: u32| -> u32 {
        let r = MIX_MULT_L
            .wrapping_mul(x)
            .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> XSHIFT)
    };
    let mut pool: Vec<u32> = (0..pool_size)
        .map(|i| hashmix(entropy_array.get(i).copied().unwrap_or(0)))
        .collect();
    for src in 0..pool_size {
        for dst in 0..pool_size {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    for extra in entropy_array.iter().skip(pool_size) {
        for slot in pool.iter_mut() {
            let h = hashmix(*extra);
            *slot = mix(*slot, h);
        }
    }

    let mut hash_const = INIT_B;
    (0..n_words)
        .map(|i| {
            let mut v = pool[i % pool_size] ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> XSHIFT)
        })
        .collect()
}

/// Python's `round(x, 6)`: the double nearest to the decimal that `x`'s exact value rounds to
/// (half to even on that exact value), as CPython does with a correctly rounded `dtoa`.
pub fn py_round6(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Rust's fixed-precision formatting is exact and rounds half to even, like CPython's
    // `_Py_dg_dtoa` in mode 3; parsing back is correctly rounded, like `strtod`.
    format!("{x:.ROUND_DIGITS$}").parse().unwrap_or(x)
}

#[derive(Debug, Clone)]
struct Node {
    start: f64,
    end: f64,
    parent: Option<usize>,
    is_left: bool,
    /// Set once the node is split: the split point, the children and the seed of the noise
    /// that bridges the node's increment into its children's.
    split: Option<Split>,
    spawn_key: u128,
    depth: u32,
}

#[derive(Debug, Clone, Copy)]
struct Split {
    midway: f64,
    left: usize,
    right: usize,
    w_seed: u32,
}

/// torchsde's `BrownianInterval(t0, t1, size, entropy, tol=1e-6, pool_size=24,
/// halfway_tree=True)` in float32, flattened to `size` elements.
#[derive(Debug, Clone)]
pub struct BrownianTree {
    size: usize,
    entropy: u64,
    nodes: Vec<Node>,
    root_w: Vec<f32>,
    /// Recently computed node increments, most recent last.
    cache: Vec<(usize, Vec<f32>)>,
    cache_entries: usize,
}

impl BrownianTree {
    /// A tree over [t0, t1] (t0 ≤ t1) for tensors of `size` elements, seeded by `entropy`.
    pub fn new(t0: f64, t1: f64, size: usize, entropy: u64) -> Result<Self, SchedulerError> {
        if t0.is_nan() || t1.is_nan() || t0 > t1 {
            return Err(SchedulerError::InvalidArgument(format!(
                "BrownianTree: initial time {t0} should be less than terminal time {t1}"
            )));
        }
        let state = seed_sequence_state(u128::from(entropy), &[], POOL_SIZE, 3);
        let scale = (t1 - t0).sqrt() as f32;
        let root_w = draw(size, state[0])
            .into_iter()
            .map(|z| z * scale)
            .collect();
        Ok(Self {
            size,
            entropy,
            nodes: vec![Node {
                start: py_round6(t0),
                end: py_round6(t1),
                parent: None,
                is_left: false,
                split: None,
                spawn_key: 0,
                depth: 0,
            }],
            root_w,
            cache: Vec::new(),
            cache_entries: (CACHE_BYTES / (4 * size.max(1)))
                .clamp(MIN_CACHE_ENTRIES, MAX_CACHE_ENTRIES),
        })
    }

    /// The number of elements of each increment.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The seed (torchsde's `entropy`).
    pub fn entropy(&self) -> u64 {
        self.entropy
    }

    /// `bm(ta, tb)`: the increment W(tb) − W(ta), ta ≤ tb, clamped to the tree's interval as
    /// torchsde does (it warns and clamps).
    pub fn increment(&mut self, ta: f64, tb: f64) -> Result<Vec<f32>, SchedulerError> {
        let (start, end) = (self.nodes[0].start, self.nodes[0].end);
        let ta = ta.clamp(start, end);
        let tb = tb.clamp(start, end);
        if ta.is_nan() || tb.is_nan() || ta > tb {
            return Err(SchedulerError::InvalidArgument(format!(
                "BrownianTree: query times ta={ta} and tb={tb} must respect ta <= tb"
            )));
        }
        if ta == tb {
            return Ok(vec![0.0; self.size]);
        }
        let (ta, tb) = (py_round6(ta), py_round6(tb));
        if ta >= tb {
            return Err(SchedulerError::InvalidArgument(format!(
                "BrownianTree: the query [{ta}, {tb}] is shorter than the tree's resolution \
                 (1e-6); torchsde fails here too (RecursionError)"
            )));
        }
        let mut pieces = Vec::new();
        self.cover(0, ta, tb, &mut pieces)?;
        let mut total: Option<Vec<f32>> = None;
        for node in pieces {
            let w = self.node_increment(node)?;
            total = Some(match total {
                None => w,
                Some(acc) => acc.iter().zip(&w).map(|(a, b)| a + b).collect(),
            });
        }
        Ok(total.unwrap_or_else(|| vec![0.0; self.size]))
    }

    /// Appends to `out`, left to right, the maximal nodes under `idx` that tile [ta, tb]
    /// (start ≤ ta < tb ≤ end of `idx`), splitting nodes where needed.
    fn cover(
        &mut self,
        idx: usize,
        ta: f64,
        tb: f64,
        out: &mut Vec<usize>,
    ) -> Result<(), SchedulerError> {
        let node = &self.nodes[idx];
        if ta == node.start && tb == node.end {
            out.push(idx);
            return Ok(());
        }
        let split = match node.split {
            Some(s) => s,
            None => self.split(idx)?,
        };
        if tb <= split.midway {
            self.cover(split.left, ta, tb, out)
        } else if ta >= split.midway {
            self.cover(split.right, ta, tb, out)
        } else {
            self.cover(split.left, ta, split.midway, out)?;
            self.cover(split.right, split.midway, tb, out)
        }
    }

    /// `_split_exact(½(start + end))`: the children and the node's noise seed.
    fn split(&mut self, idx: usize) -> Result<Split, SchedulerError> {
        let node = self.nodes[idx].clone();
        if node.depth >= MAX_DEPTH {
            return Err(SchedulerError::InvalidArgument(format!(
                "BrownianTree: the tree reached depth {MAX_DEPTH} at [{}, {}] without resolving the query",
                node.start, node.end
            )));
        }
        let midway = py_round6(0.5 * (node.end + node.start));
        // torchsde's `_set_spawn_key_and_depth`: the root is (0, 0), a child (2·key + right,
        // depth + 1), fixed when the child was made.
        let (spawn_key, depth) = (node.spawn_key, node.depth);
        let seeds = seed_sequence_state(
            u128::from(self.entropy),
            &[spawn_key, u128::from(depth)],
            POOL_SIZE,
            4,
        );
        let left = self.nodes.len();
        let child = |is_left: bool, start: f64, end: f64| Node {
            start: py_round6(start),
            end: py_round6(end),
            parent: Some(idx),
            is_left,
            split: None,
            spawn_key: 2 * spawn_key + u128::from(!is_left),
            depth: depth + 1,
        };
        self.nodes.push(child(true, node.start, midway));
        self.nodes.push(child(false, midway, node.end));
        let split = Split {
            midway,
            left,
            right: left + 1,
            w_seed: seeds[0],
        };
        self.nodes[idx].split = Some(split);
        Ok(split)
    }

    /// The increment over node `idx`, from its parent's by the Brownian bridge.
    fn node_increment(&mut self, idx: usize) -> Result<Vec<f32>, SchedulerError> {
        let Some(parent) = self.nodes[idx].parent else {
            return Ok(self.root_w.clone());
        };
        if let Some(pos) = self.cache.iter().position(|(i, _)| *i == idx) {
            let entry = self.cache.remove(pos);
            let w = entry.1.clone();
            self.cache.push(entry);
            return Ok(w);
        }
        let parent_w = self.node_increment(parent)?;
        let p = &self.nodes[parent];
        let split = p.split.ok_or_else(|| {
            SchedulerError::InvalidArgument("BrownianTree: a child of an unsplit node".into())
        })?;
        let h_reciprocal = 1.0 / (p.end - p.start);
        let left_diff = split.midway - p.start;
        let right_diff = p.end - split.midway;
        let (a, b) = ((left_diff as f32), (h_reciprocal as f32));
        let std = (left_diff * right_diff * h_reciprocal).sqrt() as f32;
        let noise = draw(self.size, split.w_seed);
        // Both children come from the same parent draw: keep the sibling too (queries walk
        // along the interval, so it is usually wanted next).
        let left: Vec<f32> = parent_w
            .iter()
            .zip(&noise)
            .map(|(w, z)| (w * a) * b + std * z)
            .collect();
        let right: Vec<f32> = parent_w.iter().zip(&left).map(|(w, l)| w - l).collect();
        let (w, sibling, sibling_idx) = if self.nodes[idx].is_left {
            (left, right, split.right)
        } else {
            (right, left, split.left)
        };
        self.remember(sibling_idx, sibling);
        self.remember(idx, w.clone());
        Ok(w)
    }

    /// Puts a node's increment in the cache as the most recent entry, evicting the oldest.
    fn remember(&mut self, idx: usize, w: Vec<f32>) {
        self.cache.retain(|(i, _)| *i != idx);
        if self.cache.len() >= self.cache_entries {
            self.cache.remove(0);
        }
        self.cache.push((idx, w));
    }
}

/// torchsde's `_randn`: `torch.randn(size, generator=torch.Generator().manual_seed(seed))`.
fn draw(size: usize, seed: u32) -> Vec<f32> {
    TorchGenerator::new(u64::from(seed)).randn(size, NoiseDtype::Float32)
}

/// diffusers' `BrownianTreeNoiseSampler` with the identity transform and one seed (the
/// unbatched `BatchedBrownianTree`): `noise(σ, σ_next) = W(σ_next) − W(σ)` over
/// `√|σ_next − σ|`, a standard normal per element.
#[derive(Debug, Clone)]
pub struct BrownianTreeNoiseSampler {
    tree: BrownianTree,
    sign: f32,
}

impl BrownianTreeNoiseSampler {
    /// The sampler over [σ_min, σ_max] for tensors of `size` elements, seeded by `seed`.
    pub fn new(
        size: usize,
        sigma_min: f32,
        sigma_max: f32,
        seed: u64,
    ) -> Result<Self, SchedulerError> {
        let (t0, t1, sign) = sort(sigma_min, sigma_max);
        Ok(Self {
            tree: BrownianTree::new(f64::from(t0), f64::from(t1), size, seed)?,
            sign,
        })
    }

    /// The number of elements of each draw.
    pub fn size(&self) -> usize {
        self.tree.size()
    }

    /// The seed the tree was built with.
    pub fn seed(&self) -> u64 {
        self.tree.entropy()
    }

    /// `sampler(σ, σ_next)`, flat, float32.
    pub fn sample(&mut self, sigma: f32, sigma_next: f32) -> Result<Vec<f32>, SchedulerError> {
        let (t0, t1, sign) = sort(sigma, sigma_next);
        let w = self.tree.increment(f64::from(t0), f64::from(t1))?;
        let factor = self.sign * sign;
        let scale = (sigma_next - sigma).abs().sqrt();
        Ok(w.into_iter().map(|v| (v * factor) / scale).collect())
    }
}

/// `BatchedBrownianTree.sort`: (min, max, 1) when a < b, else (b, a, −1).
fn sort(a: f32, b: f32) -> (f32, f32, f32) {
    if a < b { (a, b, 1.0) } else { (b, a, -1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_round6_rounds_exact_ties_to_even_like_python() {
        // Python: round(0.0078125, 6) == 0.007812 (an exact binary tie), round(2.5e-7, 6) == 0.0
        // (2.5e-7 is just below the tie in binary), round(14.6146469116, 6) == 14.614647.
        assert_eq!(py_round6(0.0078125), 0.007812);
        assert_eq!(py_round6(0.0234375), 0.023438);
        assert_eq!(py_round6(2.5e-7), 0.0);
        assert_eq!(py_round6(14.614646911621094), 14.614647);
        assert_eq!(py_round6(0.029167532920837402), 0.029168);
    }

    #[test]
    fn a_query_below_the_tolerance_is_a_typed_error_not_a_hang() {
        // torchsde: BrownianInterval(0, 1, tol=1e-6, halfway_tree=True)(0.3000001, 0.3000002)
        // raises RecursionError (both times round to 0.3).
        let mut tree = BrownianTree::new(0.0, 1.0, 3, 1).expect("tree");
        assert!(matches!(
            tree.increment(0.3000001, 0.3000002),
            Err(SchedulerError::InvalidArgument(_))
        ));
        assert!(matches!(
            tree.increment(0.5, 0.4),
            Err(SchedulerError::InvalidArgument(_))
        ));
        assert_eq!(tree.increment(0.4, 0.4).expect("empty"), vec![0.0; 3]);
    }

    #[test]
    fn uint32_words_split_little_endian() {
        assert_eq!(uint32_words(0), vec![0]);
        assert_eq!(uint32_words(1 << 32), vec![0, 1]);
        assert_eq!(uint32_words(u128::from(u64::MAX)), vec![u32::MAX, u32::MAX]);
    }
}
