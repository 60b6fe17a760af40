//! From coefficients to pixels: libjpeg's accurate integer IDCT (`jidctint`) and range limit,
//! its upsampling (`jdsample`, fancy on) and YCbCr->RGB tables (`jdcolor`).

use super::{Component, Frame, JpegError};

// libjpeg's ISLOW constants: FIX(x) = round(x * 2^13).
const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// One 1-D pass of the ISLOW IDCT on eight values; returns the eight outputs before descaling.
fn idct_1d(v: [i64; 8]) -> [i64; 8] {
    // Even part.
    let z2 = v[2];
    let z3 = v[6];
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 - z3 * FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (v[0] + v[4]) << CONST_BITS;
    let tmp1 = (v[0] - v[4]) << CONST_BITS;
    let tmp10 = tmp0 + tmp3;
    let tmp13 = tmp0 - tmp3;
    let tmp11 = tmp1 + tmp2;
    let tmp12 = tmp1 - tmp2;
    // Odd part.
    let (t0, t1, t2, t3) = (v[7], v[5], v[3], v[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    let z1 = z1 * -FIX_0_899976223;
    let z2 = z2 * -FIX_2_562915447;
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    let t0 = t0 * FIX_0_298631336 + z1 + z3;
    let t1 = t1 * FIX_2_053119869 + z2 + z4;
    let t2 = t2 * FIX_3_072711026 + z2 + z3;
    let t3 = t3 * FIX_1_501321110 + z1 + z4;
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// libjpeg's post-IDCT range limit: the value masked to 10 bits (as a signed number), plus
/// 128, clamped to [0, 255].
fn range_limit(x: i64) -> u8 {
    let m = (x & 1023) as i32;
    let signed = if m >= 512 { m - 1024 } else { m };
    (signed + 128).clamp(0, 255) as u8
}

/// ISLOW inverse DCT of one dequantised block into 8x8 samples at `out[offset..]`, `stride`
/// samples per row.
fn idct_block(coefs: &[i16], quant: &[u16; 64], out: &mut [u8], offset: usize, stride: usize) {
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let v: [i64; 8] = std::array::from_fn(|row| {
            i64::from(coefs[row * 8 + col]) * i64::from(quant[row * 8 + col])
        });
        let o = idct_1d(v);
        for row in 0..8 {
            // libjpeg keeps the workspace in an `int`.
            ws[row * 8 + col] = descale(o[row], CONST_BITS - PASS1_BITS) as i32;
        }
    }
    for row in 0..8 {
        let v: [i64; 8] = std::array::from_fn(|col| i64::from(ws[row * 8 + col]));
        let o = idct_1d(v);
        for (col, &value) in o.iter().enumerate() {
            if let Some(dst) = out.get_mut(offset + row * stride + col) {
                *dst = range_limit(descale(value, CONST_BITS + PASS1_BITS + 3));
            }
        }
    }
}

/// A component's samples after the IDCT, cropped to its real (downsampled) size.
pub(super) struct Plane {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) data: Vec<u8>,
}

impl Plane {
    fn at(&self, x: usize, y: usize) -> i32 {
        i32::from(self.data[y * self.width + x])
    }
}

pub(super) fn component_plane(f: &Frame, c: &Component) -> Result<Plane, JpegError> {
    let quant = c
        .quant
        .ok_or_else(|| JpegError::Truncated(format!("component {} has no scan", c.id)))?;
    let stride = c.bw * 8;
    let mut full = vec![0u8; stride * c.bh * 8];
    for by in 0..c.bh {
        for bx in 0..c.bw {
            let start = (by * c.bw + bx) * 64;
            if let Some(block) = c.coefs.get(start..start + 64) {
                idct_block(block, &quant, &mut full, by * 8 * stride + bx * 8, stride);
            }
        }
    }
    let width = (f.width * c.h).div_ceil(f.hmax);
    let height = (f.height * c.v).div_ceil(f.vmax);
    let mut data = Vec::with_capacity(width * height);
    for y in 0..height {
        data.extend_from_slice(&full[y * stride..y * stride + width]);
    }
    Ok(Plane {
        width,
        height,
        data,
    })
}

/// Upsamples a component to `hx` x `vy` times its size as libjpeg-turbo's `jdsample` does with
/// fancy upsampling on.
pub(super) fn upsample(p: &Plane, hx: usize, vy: usize) -> Plane {
    let (w, h) = (p.width, p.height);
    let (ow, oh) = (w * hx, h * vy);
    let mut out = vec![0u8; ow * oh];
    let above = |y: usize| y.saturating_sub(1);
    let below = |y: usize| (y + 1).min(h - 1);
    match (hx, vy) {
        (1, 1) => {
            return Plane {
                width: w,
                height: h,
                data: p.data.clone(),
            };
        }
        (2, 1) if w > 2 => {
            for y in 0..h {
                for x in 0..w {
                    let v = p.at(x, y);
                    // libjpeg copies the edge samples; inside, 3/4 nearer + 1/4 farther with
                    // alternating rounding bias 1 and 2.
                    let left = if x == 0 {
                        v
                    } else {
                        (3 * v + p.at(x - 1, y) + 1) >> 2
                    };
                    let right = if x + 1 == w {
                        v
                    } else {
                        (3 * v + p.at(x + 1, y) + 2) >> 2
                    };
                    out[y * ow + 2 * x] = left as u8;
                    out[y * ow + 2 * x + 1] = right as u8;
                }
            }
        }
        (1, 2) => {
            for y in 0..h {
                for (v, bias, other) in [(0, 1, above(y)), (1, 2, below(y))] {
                    for x in 0..w {
                        let sum = p.at(x, y) * 3 + p.at(x, other);
                        out[(2 * y + v) * ow + x] = ((sum + bias) >> 2) as u8;
                    }
                }
            }
        }
        (2, 2) if w > 2 => {
            for y in 0..h {
                for (v, other) in [(0, above(y)), (1, below(y))] {
                    let col = |x: usize| p.at(x, y) * 3 + p.at(x, other);
                    let row = (2 * y + v) * ow;
                    for x in 0..w {
                        let this = col(x);
                        let left = if x == 0 {
                            this * 4 + 8
                        } else {
                            this * 3 + col(x - 1) + 8
                        };
                        let right = if x + 1 == w {
                            this * 4 + 7
                        } else {
                            this * 3 + col(x + 1) + 7
                        };
                        out[row + 2 * x] = (left >> 4) as u8;
                        out[row + 2 * x + 1] = (right >> 4) as u8;
                    }
                }
            }
        }
        _ => {
            for y in 0..oh {
                for x in 0..ow {
                    out[y * ow + x] = p.data[(y / vy) * w + x / hx];
                }
            }
        }
    }
    Plane {
        width: ow,
        height: oh,
        data: out,
    }
}

/// libjpeg's `jdcolor` fixed-point YCbCr->RGB tables (16 fraction bits).
pub(super) struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i64; 256],
    cb_g: [i64; 256],
}

impl YccTables {
    pub(super) fn new() -> Self {
        const SCALEBITS: u32 = 16;
        const ONE_HALF: i64 = 1 << (SCALEBITS - 1);
        let fix = |x: f64| (x * f64::from(1u32 << SCALEBITS) + 0.5) as i64;
        let mut t = Self {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256usize {
            let x = i as i64 - 128;
            t.cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        t
    }

    pub(super) fn convert(&self, y: usize, cb: usize, cr: usize) -> [u8; 3] {
        let yy = y as i32;
        let g = ((self.cb_g[cb] + self.cr_g[cr]) >> 16) as i32;
        [
            (yy + self.cr_r[cr]).clamp(0, 255) as u8,
            (yy + g).clamp(0, 255) as u8,
            (yy + self.cb_b[cb]).clamp(0, 255) as u8,
        ]
    }
}
