//! Entropy decoding: Huffman tables, the bit reader, and the sequential and progressive
//! coefficient decoding procedures of T.81 (G.1.2 for progressive refinement), with libjpeg's
//! handling of damaged data (zero bits after a premature marker, overlong runs clamped to the
//! last coefficient).

use super::{Frame, JpegError, NATURAL, byte};

/// A Huffman table in the canonical form of T.81 Annex C: per code length, the largest code
/// and the offset from codes to the symbol list.
#[derive(Debug, Clone)]
pub(super) struct Huffman {
    /// `maxcode[l]`: largest code of length `l` (1..=16), or -1 when there is none.
    maxcode: [i32; 18],
    /// `valoffset[l]`: symbol index minus code for codes of length `l`.
    valoffset: [i32; 17],
    symbols: Vec<u8>,
    /// Fast path: for the next 8 bits, (code length, symbol), length 0 when longer.
    lookup: Vec<(u8, u8)>,
}

impl Huffman {
    pub(super) fn new(counts: &[u8; 16], symbols: Vec<u8>) -> Result<Self, JpegError> {
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut lookup = vec![(0u8, 0u8); 256];
        let mut code: i32 = 0;
        let mut index: i32 = 0;
        for len in 1..=16usize {
            let n = i32::from(counts[len - 1]);
            if n > 0 {
                valoffset[len] = index - code;
                if len <= 8 {
                    for c in code..code + n {
                        let sym_index = (index + c - code) as usize;
                        let sym = *symbols.get(sym_index).ok_or_else(|| {
                            JpegError::Corrupt("Huffman table has fewer symbols than codes".into())
                        })?;
                        let shift = 8 - len;
                        let first = (c as usize) << shift;
                        for entry in lookup.iter_mut().skip(first).take(1 << shift) {
                            *entry = (len as u8, sym);
                        }
                    }
                }
                code += n;
                index += n;
                maxcode[len] = code - 1;
            }
            // A code space overflow means the counts describe no prefix code.
            if code > (1 << len) {
                return Err(JpegError::Corrupt(format!(
                    "Huffman table codes overflow at length {len}"
                )));
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        Ok(Self {
            maxcode,
            valoffset,
            symbols,
            lookup,
        })
    }
}

/// Reads entropy-coded bits, removing stuffed zero bytes and stopping at markers.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    bits: u32,
    /// Set when a marker was met: from then on zero bits are supplied, as libjpeg does.
    hit_marker: bool,
    /// Set when the file ended inside the entropy-coded data.
    eof: bool,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            acc: 0,
            bits: 0,
            hit_marker: false,
            eof: false,
        }
    }

    fn fill(&mut self) {
        while self.bits <= 56 {
            let mut byte = 0u8;
            if !self.hit_marker {
                match self.data.get(self.pos) {
                    None => {
                        self.hit_marker = true;
                        self.eof = true;
                    }
                    Some(&0xFF) => match self.data.get(self.pos + 1) {
                        Some(0x00) => {
                            byte = 0xFF;
                            self.pos += 2;
                        }
                        _ => self.hit_marker = true,
                    },
                    Some(&b) => {
                        byte = b;
                        self.pos += 1;
                    }
                }
            }
            self.acc |= u64::from(byte) << (56 - self.bits);
            self.bits += 8;
        }
    }

    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        if self.bits < n {
            self.fill();
        }
        let v = (self.acc >> (64 - n)) as u32;
        self.acc <<= n;
        self.bits -= n;
        v
    }

    fn bit(&mut self) -> u32 {
        self.bits(1)
    }

    /// `RECEIVE(s)` followed by `EXTEND`: an `s`-bit magnitude category made signed.
    fn receive_extend(&mut self, s: u32) -> i32 {
        if s == 0 {
            return 0;
        }
        let s = s.min(16);
        let v = self.bits(s) as i32;
        if v < (1 << (s - 1)) {
            v - (1 << s) + 1
        } else {
            v
        }
    }

    fn decode(&mut self, table: &Huffman) -> Result<u8, JpegError> {
        if self.bits < 16 {
            self.fill();
        }
        let peek = (self.acc >> 56) as usize;
        if let Some(&(len, sym)) = table.lookup.get(peek)
            && len > 0
        {
            self.acc <<= len;
            self.bits -= u32::from(len);
            return Ok(sym);
        }
        let mut code = 0i32;
        for len in 1..=16usize {
            code = (code << 1) | self.bit() as i32;
            if code <= table.maxcode[len] {
                let index = (code + table.valoffset[len]) as usize;
                return table
                    .symbols
                    .get(index)
                    .copied()
                    .ok_or_else(|| JpegError::Corrupt("Huffman symbol index out of range".into()));
            }
        }
        Err(JpegError::Corrupt("invalid Huffman code".into()))
    }

    /// Discards buffered bits and, if the next marker is a restart marker, consumes it.
    fn restart(&mut self) {
        self.acc = 0;
        self.bits = 0;
        self.hit_marker = false;
        // Skip to the next marker (libjpeg resynchronises the same way on damaged data).
        while let Some(&b) = self.data.get(self.pos) {
            if b == 0xFF {
                match self.data.get(self.pos + 1) {
                    Some(0xFF) => self.pos += 1,
                    Some(0xD0..=0xD7) => {
                        self.pos += 2;
                        return;
                    }
                    Some(0x00) => self.pos += 2,
                    _ => return,
                }
            } else {
                self.pos += 1;
            }
        }
    }
}

/// Per-scan entropy decoding state shared by all blocks.
struct ScanState {
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
    eobrun: u32,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn decode_scan(
    f: &mut Frame,
    seg: &[u8],
    data: &[u8],
    pos: usize,
    qt: &[Option<[u16; 64]>; 4],
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    restart_interval: usize,
) -> Result<usize, JpegError> {
    let ns = usize::from(byte(seg, 0, "SOS")?);
    if ns == 0 || ns > 4 {
        return Err(JpegError::Corrupt(format!("SOS with {ns} components")));
    }
    let mut idx = Vec::with_capacity(ns);
    for i in 0..ns {
        let id = byte(seg, 1 + 2 * i, "SOS")?;
        let tables = byte(seg, 2 + 2 * i, "SOS")?;
        let ci = f
            .comps
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| JpegError::Corrupt(format!("SOS names unknown component {id}")))?;
        let c = &mut f.comps[ci];
        c.dc_table = usize::from(tables >> 4);
        c.ac_table = usize::from(tables & 15);
        if c.dc_table > 3 || c.ac_table > 3 {
            return Err(JpegError::Corrupt(format!(
                "SOS table selector {tables:#04x}"
            )));
        }
        // libjpeg latches a component's quantisation table when its first scan starts.
        if c.quant.is_none() {
            c.quant = Some(qt[c.tq].ok_or_else(|| {
                JpegError::Corrupt(format!("quantisation table {} is not defined", c.tq))
            })?);
        }
        idx.push(ci);
    }
    let ss = usize::from(byte(seg, 1 + 2 * ns, "SOS")?);
    let se = usize::from(byte(seg, 2 + 2 * ns, "SOS")?);
    let a = byte(seg, 3 + 2 * ns, "SOS")?;
    let mut st = ScanState {
        ss,
        se,
        ah: u32::from(a >> 4),
        al: u32::from(a & 15),
        eobrun: 0,
    };
    if f.progressive {
        let valid = if ss == 0 {
            se == 0
        } else {
            se >= ss && se <= 63 && ns == 1
        };
        if !valid || st.al > 13 || st.ah > 13 {
            return Err(JpegError::Corrupt(format!(
                "progressive scan parameters Ss={ss} Se={se} Ah={} Al={}",
                st.ah, st.al
            )));
        }
    } else {
        st.ss = 0;
        st.se = 63;
        st.ah = 0;
        st.al = 0;
    }
    // Tables the scan needs must exist.
    let need_dc = st.ss == 0 && st.ah == 0;
    let need_ac = st.se > 0 || !f.progressive;
    for &ci in &idx {
        let c = &f.comps[ci];
        if need_dc && dc_tables[c.dc_table].is_none() {
            return Err(JpegError::Corrupt(format!(
                "DC Huffman table {} is not defined",
                c.dc_table
            )));
        }
        if need_ac && st.ss > 0 && ac_tables[c.ac_table].is_none() {
            return Err(JpegError::Corrupt(format!(
                "AC Huffman table {} is not defined",
                c.ac_table
            )));
        }
        if !f.progressive && ac_tables[c.ac_table].is_none() {
            return Err(JpegError::Corrupt(format!(
                "AC Huffman table {} is not defined",
                c.ac_table
            )));
        }
    }

    let mut r = BitReader::new(data, pos);
    let mut preds = [0i32; 4];
    let (units_x, units_y) = if ns == 1 {
        let c = &f.comps[idx[0]];
        (c.real_bw, c.real_bh)
    } else {
        (f.mcux, f.mcuy)
    };
    let total = units_x * units_y;
    for unit in 0..total {
        if restart_interval > 0 && unit > 0 && unit % restart_interval == 0 {
            r.restart();
            preds = [0; 4];
            st.eobrun = 0;
        }
        let (ux, uy) = (unit % units_x, unit / units_x);
        for (si, &ci) in idx.iter().enumerate() {
            let c = &mut f.comps[ci];
            let (bx0, by0, nh, nv) = if ns == 1 {
                (ux, uy, 1, 1)
            } else {
                (ux * c.h, uy * c.v, c.h, c.v)
            };
            for by in by0..by0 + nv {
                for bx in bx0..bx0 + nh {
                    let start = (by * c.bw + bx) * 64;
                    let block = c
                        .coefs
                        .get_mut(start..start + 64)
                        .ok_or_else(|| JpegError::Corrupt("block outside the image".into()))?;
                    let dc = dc_tables[c.dc_table].as_ref();
                    let ac = ac_tables[c.ac_table].as_ref();
                    let pred = &mut preds[si];
                    if !f.progressive {
                        decode_baseline(&mut r, block, dc, ac, pred)?;
                    } else if st.ss == 0 {
                        if st.ah == 0 {
                            let dc = dc.ok_or_else(|| JpegError::Corrupt("no DC table".into()))?;
                            let t = u32::from(r.decode(dc)?);
                            *pred = pred.wrapping_add(r.receive_extend(t));
                            block[0] = (pred.wrapping_shl(st.al)) as i16;
                        } else if r.bit() == 1 {
                            block[0] |= (1i32 << st.al) as i16;
                        }
                    } else {
                        let ac = ac.ok_or_else(|| JpegError::Corrupt("no AC table".into()))?;
                        if st.ah == 0 {
                            decode_ac_first(&mut r, block, ac, &mut st)?;
                        } else {
                            decode_ac_refine(&mut r, block, ac, &mut st)?;
                        }
                    }
                }
            }
        }
    }
    if r.eof {
        return Err(JpegError::Truncated(
            "file ends inside the image data".into(),
        ));
    }
    Ok(r.pos)
}

fn decode_baseline(
    r: &mut BitReader,
    block: &mut [i16],
    dc: Option<&Huffman>,
    ac: Option<&Huffman>,
    pred: &mut i32,
) -> Result<(), JpegError> {
    let dc = dc.ok_or_else(|| JpegError::Corrupt("no DC table".into()))?;
    let ac = ac.ok_or_else(|| JpegError::Corrupt("no AC table".into()))?;
    let t = u32::from(r.decode(dc)?);
    *pred = pred.wrapping_add(r.receive_extend(t));
    block[0] = *pred as i16;
    let mut k = 1usize;
    while k < 64 {
        let rs = r.decode(ac)?;
        let (run, s) = (usize::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += run;
            block[NATURAL[k.min(79)]] = r.receive_extend(s) as i16;
            k += 1;
        } else if run == 15 {
            k += 16;
        } else {
            break;
        }
    }
    Ok(())
}

fn decode_ac_first(
    r: &mut BitReader,
    block: &mut [i16],
    ac: &Huffman,
    st: &mut ScanState,
) -> Result<(), JpegError> {
    if st.eobrun > 0 {
        st.eobrun -= 1;
        return Ok(());
    }
    let mut k = st.ss;
    while k <= st.se {
        let rs = r.decode(ac)?;
        let (run, s) = (u32::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += run as usize;
            let v = r.receive_extend(s).wrapping_shl(st.al);
            block[NATURAL[k.min(79)]] = v as i16;
        } else if run == 15 {
            k += 15;
        } else {
            st.eobrun = 1 << run;
            if run > 0 {
                st.eobrun += r.bits(run);
            }
            st.eobrun -= 1;
            break;
        }
        k += 1;
    }
    Ok(())
}

fn decode_ac_refine(
    r: &mut BitReader,
    block: &mut [i16],
    ac: &Huffman,
    st: &mut ScanState,
) -> Result<(), JpegError> {
    let p1 = (1i32 << st.al) as i16;
    let m1 = (-1i32 << st.al) as i16;
    let mut k = st.ss;
    // Appends a correction bit to an already non-zero coefficient.
    let correct = |r: &mut BitReader, coef: &mut i16| {
        if r.bit() == 1 && (*coef & p1) == 0 {
            *coef = if *coef >= 0 {
                coef.wrapping_add(p1)
            } else {
                coef.wrapping_add(m1)
            };
        }
    };
    if st.eobrun == 0 {
        while k <= st.se {
            let rs = r.decode(ac)?;
            let mut run = i32::from(rs >> 4);
            let s = rs & 15;
            let mut value = 0i16;
            if s != 0 {
                value = if r.bit() == 1 { p1 } else { m1 };
            } else if run != 15 {
                st.eobrun = 1 << run;
                if run > 0 {
                    st.eobrun += r.bits(run as u32);
                }
                break;
            }
            while k <= st.se {
                let coef = &mut block[NATURAL[k.min(79)]];
                if *coef != 0 {
                    correct(r, coef);
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if value != 0 {
                block[NATURAL[k.min(79)]] = value;
            }
            k += 1;
        }
    }
    if st.eobrun > 0 {
        while k <= st.se {
            let coef = &mut block[NATURAL[k.min(79)]];
            if *coef != 0 {
                correct(r, coef);
            }
            k += 1;
        }
        st.eobrun -= 1;
    }
    Ok(())
}
