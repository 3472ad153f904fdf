//! Who is who: the pure functions from a rank to its place in a strategy (tp rank, pipeline stage,
//! ring position) and to the tokens, heads and layers it owns. No MPI here; everything is unit-tested.
//!
//! tp-pp, Megatron's convention (TP groups are contiguous ranks, so they stay inside a node):
//! `rank = tp_rank + tp * stage`. Example, tp 4 x pp 2:
//! ```text
//! rank     0 1 2 3 | 4 5 6 7
//! stage    0 0 0 0 | 1 1 1 1
//! tp rank  0 1 2 3 | 0 1 2 3
//! ```
//! ring, zigzag over P ranks: each sequence is cut into 2P chunks; rank r holds chunks r and
//! 2P-1-r, so every rank gets one early (cheap under the causal mask) and one late (expensive) chunk.
//! Example, P = 4, seq 16: rank 0 holds tokens 0-1 and 14-15, rank 3 holds 6-7 and 8-9.
//! striped (Striped Attention): token i on rank i mod P; rank 1 of 4 holds 1, 5, 9, 13.
//!
//! Two-dimensional strategies (usp, tp-cp) place their inner group on consecutive ranks, as tp-pp
//! does (docs/design.md, "Placement"): `rank = inner + inner_size x outer`. usp lays each sequence out
//! over the R ring positions, then each ring position's tokens over its U Ulysses members in
//! order. Example, U 2 x R 2, zigzag, seq 16: ring position 0 holds 0-3 and 12-15, so rank 0 holds
//! 0-3 and rank 1 holds 12-15; ring position 1 holds 4-11: rank 2 holds 4-7, rank 3 holds 8-11.

use crate::config::Layout;
use std::ops::Range;

/// `len` global token positions of one sequence, `start`, `start + stride`, ...: consecutive
/// (stride 1) for the zigzag and contiguous layouts, every P-th for the striped one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: usize,
    pub len: usize,
    pub stride: usize,
}

impl Segment {
    /// Consecutive positions `start .. start + len`.
    pub fn run(start: usize, len: usize) -> Self {
        Segment { start, len, stride: 1 }
    }

    /// The positions, in the order the rows hold them.
    pub fn positions(&self) -> impl Iterator<Item = usize> {
        let (start, stride) = (self.start, self.stride);
        (0..self.len).map(move |i| start + i * stride)
    }

    /// The last position (start for an empty segment).
    pub fn last(&self) -> usize {
        self.start + self.len.saturating_sub(1) * self.stride
    }
}

/// The tokens a rank holds of every sequence, in the order its rows store them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalTokens {
    pub segments: Vec<Segment>,
}

impl LocalTokens {
    pub fn whole(seq_len: usize) -> Self {
        LocalTokens { segments: vec![Segment::run(0, seq_len)] }
    }

    /// Tokens per sequence.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `rows` of these tokens (within one sequence), as tokens of their own.
    pub fn rows(&self, rows: Range<usize>) -> LocalTokens {
        let mut segments = Vec::new();
        for (r, s) in self.with_rows() {
            let (a, b) = (rows.start.max(r), rows.end.min(r + s.len));
            if a < b {
                segments.push(Segment { start: s.start + (a - r) * s.stride, len: b - a, stride: s.stride });
            }
        }
        LocalTokens { segments }
    }

    /// `parts` back to back, as one rank's rows would hold them; a segment that continues the
    /// previous one (same stride, next position) is merged into it.
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a LocalTokens>) -> LocalTokens {
        let mut segments: Vec<Segment> = Vec::new();
        for s in parts.into_iter().flat_map(|p| p.segments.iter()).filter(|s| s.len > 0) {
            match segments.last_mut() {
                Some(l) if l.stride == s.stride && l.start + l.len * l.stride == s.start => l.len += s.len,
                _ => segments.push(*s),
            }
        }
        LocalTokens { segments }
    }

    /// Each segment with the local row (within one sequence) where it starts.
    pub fn with_rows(&self) -> impl Iterator<Item = (usize, Segment)> + '_ {
        self.segments.iter().scan(0, |row, s| {
            let r = *row;
            *row += s.len;
            Some((r, *s))
        })
    }
}

/// `n` nearly equal consecutive chunks of `len` tokens: the first `len % n` are one token longer.
pub fn chunks(len: usize, n: usize) -> Vec<Segment> {
    let (base, extra) = (len / n, len % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let s = Segment::run(start, base + usize::from(i < extra));
            start += s.len;
            s
        })
        .collect()
}

/// How many chunks a ring of `ring` ranks cuts each sequence into (striped: one strided chunk each).
pub fn chunk_count(layout: Layout, ring: usize) -> usize {
    match layout {
        Layout::Zigzag => ring.saturating_mul(2),
        Layout::Contiguous | Layout::Striped => ring,
    }
}

/// The tokens ring position `rank` holds of every sequence.
pub fn ring_tokens(layout: Layout, seq_len: usize, ring: usize, rank: usize) -> LocalTokens {
    if layout == Layout::Striped {
        // Token i on rank i mod P: positions rank, rank + P, ...
        return LocalTokens { segments: vec![Segment { start: rank, len: (seq_len + ring - 1 - rank) / ring, stride: ring }] };
    }
    let c = chunks(seq_len, chunk_count(layout, ring));
    let segments = match layout {
        Layout::Zigzag => vec![c[rank], c[2 * ring - 1 - rank]],
        Layout::Contiguous | Layout::Striped => vec![c[rank]],
    };
    LocalTokens { segments }
}

/// Ring neighbours: (send to, receive from).
pub fn ring_peers(rank: usize, ring: usize) -> (usize, usize) {
    ((rank + 1) % ring, (rank + ring - 1) % ring)
}

/// Whose K/V block ring position `rank` holds at step `step`: blocks travel rank -> rank + 1.
pub fn ring_block_owner(rank: usize, step: usize, ring: usize) -> usize {
    (rank + ring - step % ring) % ring
}

/// A rank's place in a two-dimensional split whose inner groups are `inner` consecutive ranks:
/// (index in its inner group, index of the group).
pub fn grid_coord(rank: usize, inner: usize) -> (usize, usize) {
    (rank % inner, rank / inner)
}

/// The rank at (`index` in inner group `group`), groups of `inner` consecutive ranks.
pub fn grid_rank(index: usize, group: usize, inner: usize) -> usize {
    index + inner * group
}

/// The tokens usp rank (`member` of its Ulysses group of `ulysses`, at ring position `ring_pos`
/// of `ring`) holds: its ring position's tokens under `layout`, cut into `ulysses` nearly equal
/// runs of rows, the `member`-th.
pub fn usp_tokens(layout: Layout, seq_len: usize, ulysses: usize, ring: usize, member: usize, ring_pos: usize) -> LocalTokens {
    let group = ring_tokens(layout, seq_len, ring, ring_pos);
    let parts = chunks(group.len(), ulysses);
    let part = parts[member];
    group.rows(part.start..part.start + part.len)
}

/// A rank's place in tp x pp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpPpCoord {
    pub stage: usize,
    pub tp_rank: usize,
}

pub fn tp_pp_coord(rank: usize, tp: usize) -> TpPpCoord {
    TpPpCoord { stage: rank / tp, tp_rank: rank % tp }
}

pub fn tp_pp_rank(c: TpPpCoord, tp: usize) -> usize {
    c.tp_rank + tp * c.stage
}

/// The slice `part` of `n` items split evenly across `parts` (heads, MLP columns, layers).
pub fn even_slice(n: usize, parts: usize, part: usize) -> Range<usize> {
    debug_assert_eq!(n % parts, 0);
    let w = n / parts;
    part * w..(part + 1) * w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coverage(layout: Layout, seq: usize, ring: usize) -> Vec<usize> {
        let mut seen = vec![0usize; seq];
        for r in 0..ring {
            for s in ring_tokens(layout, seq, ring, r).segments {
                assert!(s.len > 0, "empty chunk: seq {seq} ring {ring} rank {r}");
                s.positions().for_each(|p| seen[p] += 1);
            }
        }
        seen
    }

    #[test]
    fn both_layouts_cover_every_token_once_also_for_uneven_lengths() {
        for layout in [Layout::Zigzag, Layout::Contiguous, Layout::Striped] {
            for ring in [1, 2, 3, 4, 8, 16] {
                for seq in [chunk_count(layout, ring), 97, 1000, 1023, 100_003] {
                    if seq < chunk_count(layout, ring) {
                        continue;
                    }
                    assert!(coverage(layout, seq, ring).iter().all(|&n| n == 1), "{layout:?} seq {seq} ring {ring}");
                }
            }
        }
    }

    #[test]
    fn zigzag_worked_example() {
        let t = |r| ring_tokens(Layout::Zigzag, 16, 4, r).segments;
        assert_eq!(t(0), vec![Segment::run(0, 2), Segment::run(14, 2)]);
        assert_eq!(t(3), vec![Segment::run(6, 2), Segment::run(8, 2)]);
        let striped = ring_tokens(Layout::Striped, 16, 4, 1).segments[0];
        assert_eq!(striped.positions().collect::<Vec<_>>(), vec![1, 5, 9, 13]);
        assert_eq!(ring_tokens(Layout::Striped, 10, 4, 3).len(), 2, "tokens 3 and 7");
        // Uneven: 10 tokens in 8 chunks, the first two chunks have 2 tokens.
        let c = chunks(10, 8);
        assert_eq!(c.iter().map(|s| s.len).collect::<Vec<_>>(), vec![2, 2, 1, 1, 1, 1, 1, 1]);
        assert_eq!(ring_tokens(Layout::Zigzag, 10, 4, 0).len(), 3);
    }

    #[test]
    fn zigzag_balances_causal_work() {
        // Causal work of a rank ~ sum over its tokens of (position + 1).
        let work =
            |layout, r| -> usize { ring_tokens(layout, 1600, 8, r).segments.iter().flat_map(|s| s.positions()).map(|p| p + 1).sum() };
        let zz: Vec<usize> = (0..8).map(|r| work(Layout::Zigzag, r)).collect();
        assert!(zz.iter().all(|&w| w == zz[0]), "zigzag work {zz:?}");
        let ct: Vec<usize> = (0..8).map(|r| work(Layout::Contiguous, r)).collect();
        assert!(ct[7] > 10 * ct[0]);
        // Striped: within P - 1 tokens' work of each other (rank r's every token is r later).
        let st: Vec<usize> = (0..8).map(|r| work(Layout::Striped, r)).collect();
        assert!(st.windows(2).all(|w| w[1] - w[0] == 200), "striped work {st:?}");
    }

    #[test]
    fn ring_blocks_arrive_from_the_left() {
        for ring in [1, 2, 5] {
            for rank in 0..ring {
                let (next, prev) = ring_peers(rank, ring);
                assert_eq!(ring_block_owner(rank, 0, ring), rank);
                for step in 0..ring {
                    // What `rank` holds at step+1 is what `prev` held at step.
                    assert_eq!(ring_block_owner(rank, step + 1, ring), ring_block_owner(prev, step, ring));
                    assert_eq!(ring_block_owner(next, step + 1, ring), ring_block_owner(rank, step, ring));
                }
                let owners: std::collections::BTreeSet<_> = (0..ring).map(|s| ring_block_owner(rank, s, ring)).collect();
                assert_eq!(owners.len(), ring, "every block visits every rank once");
            }
        }
    }

    #[test]
    fn tp_pp_worked_example() {
        let coords: Vec<_> = (0..8).map(|r| tp_pp_coord(r, 4)).collect();
        assert_eq!(coords[5], TpPpCoord { stage: 1, tp_rank: 1 });
        for (r, c) in coords.iter().enumerate() {
            assert_eq!(tp_pp_rank(*c, 4), r);
        }
        assert_eq!(even_slice(32, 8, 3), 12..16);
    }

    #[test]
    fn usp_worked_example_and_coverage() {
        let t = |member, pos| usp_tokens(Layout::Zigzag, 16, 2, 2, member, pos).segments;
        assert_eq!(t(0, 0), vec![Segment::run(0, 4)]);
        assert_eq!(t(1, 0), vec![Segment::run(12, 4)]);
        assert_eq!((t(0, 1), t(1, 1)), (vec![Segment::run(4, 4)], vec![Segment::run(8, 4)]));
        // A member's run of rows may straddle the zigzag's two chunks: 3 members of 10 + 10 rows.
        let g = ring_tokens(Layout::Zigzag, 40, 2, 0);
        assert_eq!(g.rows(5..12).segments, vec![Segment::run(5, 5), Segment::run(30, 2)]);
        for layout in [Layout::Zigzag, Layout::Contiguous, Layout::Striped] {
            for (u, r, seq) in [(2, 2, 37), (3, 2, 97), (2, 3, 1023), (4, 1, 9), (1, 4, 17)] {
                let mut seen = vec![0usize; seq];
                for pos in 0..r {
                    let members: Vec<_> = (0..u).map(|m| usp_tokens(layout, seq, u, r, m, pos)).collect();
                    // The members' rows back to back are the ring position's tokens.
                    assert_eq!(LocalTokens::concat(&members), LocalTokens::concat([&ring_tokens(layout, seq, r, pos)]));
                    members.iter().flat_map(|t| t.segments.iter().flat_map(|s| s.positions())).for_each(|p| seen[p] += 1);
                }
                assert!(seen.iter().all(|&n| n == 1), "{layout:?} {u} x {r}, seq {seq}");
            }
        }
        assert_eq!(LocalTokens::concat([&LocalTokens::whole(3), &ring_tokens(Layout::Contiguous, 6, 2, 1)]), LocalTokens::whole(6));
        assert_eq!((grid_coord(5, 2), grid_rank(1, 2, 2)), ((1, 2), 5));
    }

    #[test]
    fn local_rows_follow_the_segments() {
        let t = ring_tokens(Layout::Zigzag, 16, 4, 1);
        let rows: Vec<_> = t.with_rows().collect();
        assert_eq!(rows, vec![(0, Segment::run(2, 2)), (2, Segment::run(12, 2))]);
    }
}
