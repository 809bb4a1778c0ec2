//! 8-connected component labelling of binary ground-truth masks, for AUPRO's per-region overlap.
//!
//! AUPRO averages the recall of each defect *region*, so a mask must first be split into regions. anomalib uses
//! OpenCV's `connectedComponents`, whose default is 8-connectivity: pixels that touch only at a corner belong to the
//! same region. We use the classic two-pass algorithm with a union-find forest: the first pass gives each foreground
//! pixel a provisional label taken from its already-visited neighbours (west, north-west, north, north-east) and
//! records equivalences when those neighbours disagree; the second pass replaces each provisional label by a compact
//! label of its equivalence class. It is linear in the number of pixels and needs one `u32` per pixel, unlike a
//! recursive flood fill, whose stack depth a single large region could blow.

use super::error::MetricsError;

/// The regions of one mask. Label 0 is background; regions are numbered `1..=count()` in the order in which their
/// first pixel appears in row-major order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Components {
    labels: Vec<u32>,
    sizes: Vec<u64>,
}

impl Components {
    /// The label of every pixel, row-major; 0 is background.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Number of regions.
    pub fn count(&self) -> usize {
        self.sizes.len()
    }

    /// Pixel count of each region; `sizes()[k - 1]` belongs to label `k`.
    pub fn sizes(&self) -> &[u64] {
        &self.sizes
    }

    /// Size of the region that pixel `index` belongs to, or `None` for a background pixel.
    pub fn region_size_at(&self, index: usize) -> Option<u64> {
        match self.labels[index] {
            0 => None,
            label => Some(self.sizes[label as usize - 1]),
        }
    }
}

/// Labels the 8-connected regions of `mask` (row-major, `width * height` bytes, non-zero = foreground).
///
/// Errors: [`MetricsError::MapShape`] if the mask length is not `width * height`, or if the image has `u32::MAX`
/// pixels or more (labels are `u32`).
pub fn connected_components(
    mask: &[u8],
    width: usize,
    height: usize,
) -> Result<Components, MetricsError> {
    let expected = width.saturating_mul(height);
    if mask.len() != expected || expected >= u32::MAX as usize {
        return Err(MetricsError::MapShape {
            name: "(connected components)".into(),
            width,
            height,
            expected,
            what: "the mask",
            actual: mask.len(),
        });
    }
    let mut labels = vec![0u32; mask.len()];
    // parent[k] is the union-find parent of provisional label k; index 0 stands for the background and is unused.
    let mut parent: Vec<u32> = vec![0];

    for y in 0..height {
        let row = y * width;
        for x in 0..width {
            let i = row + x;
            if mask[i] == 0 {
                continue;
            }
            let mut label = 0u32;
            let mut join = |other: u32, parent: &mut Vec<u32>| {
                if other == 0 {
                    return;
                }
                if label == 0 {
                    label = other;
                } else {
                    union(parent, label, other);
                }
            };
            if x > 0 {
                join(labels[i - 1], &mut parent);
            }
            if y > 0 {
                let up = i - width;
                if x > 0 {
                    join(labels[up - 1], &mut parent);
                }
                join(labels[up], &mut parent);
                if x + 1 < width {
                    join(labels[up + 1], &mut parent);
                }
            }
            if label == 0 {
                // Cannot overflow: there are fewer provisional labels than pixels, which is below u32::MAX.
                label = parent.len() as u32;
                parent.push(label);
            }
            labels[i] = label;
        }
    }

    // Second pass: compact labels in order of first appearance, and region sizes.
    let mut compact = vec![0u32; parent.len()];
    let mut sizes: Vec<u64> = Vec::new();
    for label in labels.iter_mut().filter(|l| **l != 0) {
        let root = find(&mut parent, *label) as usize;
        if compact[root] == 0 {
            sizes.push(0);
            compact[root] = sizes.len() as u32;
        }
        *label = compact[root];
        sizes[*label as usize - 1] += 1;
    }
    Ok(Components { labels, sizes })
}

/// Root of `label`, halving the path on the way.
fn find(parent: &mut [u32], mut label: u32) -> u32 {
    while parent[label as usize] != label {
        let grandparent = parent[parent[label as usize] as usize];
        parent[label as usize] = grandparent;
        label = grandparent;
    }
    label
}

/// Merges the classes of `a` and `b`, keeping the smaller root (any choice is correct; this one keeps trees shallow
/// for the row-major scan, where older labels are smaller).
fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra < rb {
        parent[rb as usize] = ra;
    } else if rb < ra {
        parent[ra as usize] = rb;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(rows: &[&str]) -> (Vec<u8>, usize, usize) {
        let width = rows[0].len();
        let mask = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| u8::from(b == b'#')))
            .collect();
        (mask, width, rows.len())
    }

    #[test]
    fn diagonal_neighbours_connect() {
        let (mask, w, h) = parse(&["#...", ".#..", "..#.", "...#"]);
        let c = connected_components(&mask, w, h).unwrap();
        assert_eq!(c.count(), 1);
        assert_eq!(c.sizes(), &[4]);
    }

    #[test]
    fn u_shape_and_anti_diagonal_merge_late() {
        // The two arms of the U get different provisional labels that only meet on the last row; the anti-diagonal
        // on the right is joined through north-east neighbours.
        let (mask, w, h) = parse(&[
            "#.#...#", //
            "#.#..#.", //
            "###.#..", //
            ".......", //
            "#.....#", //
        ]);
        let c = connected_components(&mask, w, h).unwrap();
        assert_eq!(c.count(), 4);
        assert_eq!(c.sizes(), &[7, 3, 1, 1]);
        assert_eq!(c.region_size_at(0), Some(7));
        assert_eq!(c.region_size_at(1), None);
        assert_eq!(c.labels()[6], 2);
        assert_eq!(c.labels()[4 * 7], 3);
        assert_eq!(c.labels()[4 * 7 + 6], 4);
    }

    #[test]
    fn full_and_empty_masks() {
        let c = connected_components(&[255; 12], 4, 3).unwrap();
        assert_eq!(c.sizes(), &[12]);
        let c = connected_components(&[0; 12], 4, 3).unwrap();
        assert_eq!(c.count(), 0);
        let c = connected_components(&[], 0, 5).unwrap();
        assert_eq!(c.count(), 0);
        assert!(connected_components(&[1; 5], 2, 3).is_err());
    }

    /// Reference: flood fill with an explicit stack.
    fn flood_fill_count(mask: &[u8], w: usize, h: usize) -> (usize, Vec<u64>) {
        let mut seen = vec![false; mask.len()];
        let mut sizes = Vec::new();
        for start in 0..mask.len() {
            if mask[start] == 0 || seen[start] {
                continue;
            }
            let mut size = 0;
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(i) = stack.pop() {
                size += 1;
                let (x, y) = ((i % w) as isize, (i / w) as isize);
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let (nx, ny) = (x + dx, y + dy);
                        if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                            continue;
                        }
                        let j = ny as usize * w + nx as usize;
                        if mask[j] != 0 && !seen[j] {
                            seen[j] = true;
                            stack.push(j);
                        }
                    }
                }
            }
            sizes.push(size);
        }
        (sizes.len(), sizes)
    }

    proptest! {
        #[test]
        fn matches_flood_fill(w in 1usize..16, h in 1usize..16, bits in proptest::collection::vec(any::<bool>(), 256)) {
            let mask: Vec<u8> = bits[..w * h].iter().map(|&b| u8::from(b)).collect();
            let c = connected_components(&mask, w, h).unwrap();
            let (count, sizes) = flood_fill_count(&mask, w, h);
            prop_assert_eq!(c.count(), count);
            // Both number regions by their first pixel in row-major order.
            prop_assert_eq!(c.sizes(), &sizes[..]);
        }
    }
}
