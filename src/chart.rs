//! The frame every chart of ringbench is drawn in: a title, a subtitle that says what the figures
//! are of (model, sizes, batch, backend, device, and whether measured or projected), the plot,
//! and a panel beside it for the legend and the notes (outside the data, so it never covers a
//! bar or a line). The title, subtitle and notes are also stored in the PNG's text chunks, where
//! a reader or a test finds them without reading pixels. Written beside the CSVs as `output`
//! writes its tables: whole or not at all.

use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (1200, 720);
/// Title and subtitle lines above the plot.
const HEADER_PX: u32 = 84;
/// The legend and notes panel right of the plot.
const PANEL_PX: u32 = 290;
pub const FONT: &str = "sans-serif";

/// Where a TrueType font for the charts' text is looked for (RINGBENCH_FONT first).
const FONT_PATHS: [&str; 3] =
    ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];

pub fn load_font() -> Result<()> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let candidates: Vec<PathBuf> =
                std::env::var_os("RINGBENCH_FONT").map(PathBuf::from).into_iter().chain(FONT_PATHS.iter().map(PathBuf::from)).collect();
            let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
                format!(
                    "charts need a TrueType font for their labels: install fonts-dejavu-core or set RINGBENCH_FONT (looked in {})",
                    FONT_PATHS.join(", ")
                )
            })?;
            let bytes: &'static [u8] =
                Box::leak(std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// A series colour: one for each of the seven strategies, and five more for a chart of more runs,
/// before any repeats.
pub fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 12] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(127, 127, 127),
        RGBColor(57, 59, 121),
        RGBColor(99, 121, 57),
    ];
    PALETTE[i % PALETTE.len()]
}

pub fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("{e}")
}

/// How a legend entry is marked.
#[derive(Clone, Copy, Debug)]
pub enum Mark {
    Line(RGBColor),
    Block(RGBColor),
    Cross,
}

/// What the frame draws around the plot.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub title: String,
    /// What the figures are of: model, sizes, batch, backend, device, measured or projected.
    pub subtitle: String,
    pub legend: Vec<(String, Option<Mark>)>,
    /// Sentences under the legend: what is not drawn and why, how to read the chart.
    pub notes: Vec<String>,
}

/// A token count as an axis shows it: 8Ki, 128Ki, 1Mi for powers of two (as the flags take
/// them), else 8K, 1.5M.
pub fn fmt_tokens(x: f64) -> String {
    let n = x.round() as u64;
    if n >= 1024 && n.is_power_of_two() {
        return if n >= 1 << 20 { format!("{}Mi", n >> 20) } else { format!("{}Ki", n >> 10) };
    }
    fmt_count(x)
}

/// A count in three significant digits with a decimal suffix: 950, 12K, 1.5M, 2G.
pub fn fmt_count(x: f64) -> String {
    let (v, unit) = match x.abs() {
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e3 => (x / 1e3, "K"),
        _ => (x, ""),
    };
    let digits = if v.abs() >= 100.0 || v == v.round() {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    format!("{s}{unit}")
}

/// Tick positions of a log axis over `lo..hi`: the coarsest of 1, 1-3, 1-2-5 or 1-to-9 times the
/// powers of ten that gives at least four ticks (at most about a dozen).
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return Vec::new();
    }
    let ladders: [&[f64]; 4] = [&[1.0], &[1.0, 3.0], &[1.0, 2.0, 5.0], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]];
    let ticks = |steps: &[f64]| {
        let mut out = Vec::new();
        let mut p = 10f64.powf(lo.log10().floor());
        while p <= hi {
            out.extend(steps.iter().map(|s| s * p).filter(|v| (lo..=hi).contains(v)));
            p *= 10.0;
        }
        out
    };
    let mut last = Vec::new();
    for steps in ladders {
        let t = ticks(steps);
        if t.len() >= 4 {
            return if t.len() > 14 { last } else { t };
        }
        last = t;
    }
    last
}

/// Draw a chart into `<dir>/<name>.png`: the page's frame, and `draw` into the plot's area.
/// Drawn into `<name>.partial.png` first, then moved into place: an identical existing chart is
/// left alone, a different one is refused, or, with `replace` (a chart drawn again from data that
/// is kept, as a measured sweep's), replaced whole.
pub fn chart(
    dir: &Path,
    name: &str,
    replace: bool,
    page: &Page,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<PathBuf> {
    load_font()?;
    let path = dir.join(format!("{name}.png"));
    let tmp = dir.join(format!("{name}.partial.png"));
    if std::fs::symlink_metadata(&tmp).is_ok() {
        // A crash's leftover, or a link planted there: removed, never drawn through.
        std::fs::remove_file(&tmp)?;
    }
    {
        let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (header, body) = root.split_vertically(HEADER_PX);
        header.draw(&Text::new(page.title.clone(), (20, 10), (FONT, 26).into_font())).map_err(err)?;
        for (i, line) in wrap(&page.subtitle, 130).iter().take(2).enumerate() {
            header
                .draw(&Text::new(line.clone(), (20, 44 + 18 * i as i32), (FONT, 15).into_font().color(&RGBColor(70, 70, 70))))
                .map_err(err)?;
        }
        let (plot, panel) = body.split_horizontally(SIZE.0 - PANEL_PX);
        draw(&plot)?;
        draw_panel(&panel, page)?;
        root.present().map_err(|e| anyhow!("writing {}: {e}", tmp.display()))?;
    }
    let text = [("Title", page.title.as_str()), ("Description", page.subtitle.as_str())];
    let notes = page.notes.join(" ");
    let mut chunks: Vec<(&str, &str)> = text.to_vec();
    if !notes.is_empty() {
        chunks.push(("Comment", notes.as_str()));
    }
    with_text_chunks(&tmp, &chunks)?;
    if path.exists() && replace {
        std::fs::rename(&tmp, &path).map_err(|e| anyhow!("replacing {}: {e}", path.display()))?;
        return Ok(path);
    }
    if path.exists() {
        let same = std::fs::read(&path)? == std::fs::read(&tmp)?;
        std::fs::remove_file(&tmp)?;
        if !same {
            bail!("{} exists and differs; it is never overwritten", path.display());
        }
        return Ok(path);
    }
    crate::output::publish(&tmp, &path)?;
    Ok(path)
}

/// The legend, then the notes, in the panel right of the plot.
fn draw_panel(panel: &DrawingArea<BitMapBackend, Shift>, page: &Page) -> Result<()> {
    let mut y = 30;
    let small = (FONT, 14).into_font();
    for (label, mark) in &page.legend {
        let x = 10;
        match mark {
            Some(Mark::Line(c)) => {
                panel.draw(&PathElement::new(vec![(x, y + 8), (x + 24, y + 8)], c.stroke_width(3))).map_err(err)?;
                panel.draw(&Circle::new((x + 12, y + 8), 4, c.filled())).map_err(err)?;
            }
            Some(Mark::Block(c)) => panel.draw(&Rectangle::new([(x + 4, y + 1), (x + 20, y + 15)], c.filled())).map_err(err)?,
            Some(Mark::Cross) => panel.draw(&Cross::new((x + 12, y + 8), 6, BLACK.stroke_width(2))).map_err(err)?,
            None => {}
        }
        for (i, line) in wrap(label, 30).iter().enumerate() {
            panel.draw(&Text::new(line.clone(), (x + 32, y + 18 * i as i32), small.clone())).map_err(err)?;
            if i > 0 {
                y += 18;
            }
        }
        y += 22;
    }
    y += 10;
    for note in &page.notes {
        for line in wrap(note, 36) {
            panel.draw(&Text::new(line, (10, y), (FONT, 13).into_font().color(&RGBColor(60, 60, 60)))).map_err(err)?;
            y += 17;
        }
        y += 8;
    }
    Ok(())
}

/// `text` broken at spaces into lines of at most `width` characters (a longer word stands alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// Add PNG tEXt chunks (keyword, text) before IEND: the chart's words, for readers and tests.
fn with_text_chunks(path: &Path, chunks: &[(&str, &str)]) -> Result<()> {
    let png = std::fs::read(path)?;
    let iend =
        png.len().checked_sub(12).filter(|&i| &png[i + 4..i + 8] == b"IEND").ok_or_else(|| anyhow!("{}: no IEND chunk", path.display()))?;
    let mut out = png[..iend].to_vec();
    for (key, text) in chunks {
        // tEXt is Latin-1: anything else is replaced, not mis-encoded.
        let text: String = text.chars().map(|c| if (c as u32) < 256 { c } else { '?' }).collect();
        let mut data = key.as_bytes().to_vec();
        data.push(0);
        data.extend(text.chars().map(|c| c as u8));
        out.extend((data.len() as u32).to_be_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(b"tEXt");
        h.update(&data);
        out.extend(b"tEXt");
        out.extend(&data);
        out.extend(h.finalize().to_be_bytes());
    }
    out.extend(&png[iend..]);
    std::fs::write(path, out)?;
    Ok(())
}

/// The tEXt chunks of a PNG file, keyword and text: what `chart` stored.
pub fn text_chunks(png: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]) as usize;
        let Some(data) = png.get(at + 8..at + 8 + len) else { break };
        if &png[at + 4..at + 8] == b"tEXt" {
            if let Some(nul) = data.iter().position(|&b| b == 0) {
                let key = String::from_utf8_lossy(&data[..nul]).to_string();
                out.push((key, data[nul + 1..].iter().map(|&b| b as char).collect()));
            }
        }
        at += 12 + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_read_as_people_write_sizes() {
        assert_eq!(fmt_tokens(8192.0), "8Ki");
        assert_eq!(fmt_tokens(131072.0), "128Ki");
        assert_eq!(fmt_tokens(1048576.0), "1Mi");
        assert_eq!(fmt_tokens(100000.0), "100K");
        assert_eq!(fmt_count(500000.0), "500K");
        assert_eq!(fmt_count(1.5e6), "1.5M");
        assert_eq!(fmt_count(23456.0), "23.5K");
        assert_eq!(fmt_count(7.0), "7");
        assert_eq!(log_ticks(3000.0, 90000.0), vec![5000.0, 10000.0, 20000.0, 50000.0]);
        assert!(log_ticks(1.0, 1e9).iter().all(|t| t.log10().fract() == 0.0));
        assert_eq!(log_ticks(46000.0, 130000.0), vec![50000.0, 60000.0, 70000.0, 80000.0, 90000.0, 100000.0]);
    }

    #[test]
    fn the_words_of_a_chart_travel_in_its_png() {
        let dir = std::env::temp_dir().join(format!("ringbench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        if load_font().is_err() {
            return; // no font on this machine: `chart` refuses with its own message
        }
        let page = Page { title: "t".into(), subtitle: "llama3-8b: 32 layers, batch 1".into(), legend: vec![], notes: vec!["n".into()] };
        let path = chart(&dir, "c", false, &page, |_| Ok(())).unwrap();
        let chunks = text_chunks(&std::fs::read(&path).unwrap());
        assert!(chunks.contains(&("Description".into(), "llama3-8b: 32 layers, batch 1".into())), "{chunks:?}");
        assert!(chunks.contains(&("Comment".into(), "n".into())), "{chunks:?}");
        image_decodes(&path);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The chunks leave the PNG well formed: every chunk's CRC holds, IEND last.
    fn image_decodes(path: &Path) {
        let png = std::fs::read(path).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut at = 8;
        let mut last = [0u8; 4];
        while at + 12 <= png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let body = &png[at + 4..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc32fast::hash(body), crc, "chunk {:?}", String::from_utf8_lossy(&body[..4]));
            last.copy_from_slice(&body[..4]);
            at += 12 + len;
        }
        assert_eq!((at, &last), (png.len(), b"IEND"));
    }
}
