//! `esplab lab run` output helpers that need the host: `plot.png` (the SVG plot rendered
//! with resvg, system fonts for the labels) and the progress bar on stderr. Kept out of
//! `esplab-lab`, which stays sans-IO.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Why the plot could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// The SVG did not parse (a bug in the SVG writer).
    #[error("plot.svg does not parse: {0}")]
    Svg(String),
    /// Zero or absurd canvas size.
    #[error("plot.svg has no usable size")]
    Size,
    /// The PNG encoder failed.
    #[error("PNG encoding: {0}")]
    Encode(String),
}

/// Renders an SVG document to PNG bytes at its own size. Text needs a system font: the
/// generic `sans-serif` is mapped to the first of DejaVu Sans, Liberation Sans, Noto Sans,
/// or any font found; without fonts the labels are left out (the curves still render).
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>, PngError> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    {
        let db = opt.fontdb_mut();
        db.load_system_fonts();
        let families: Vec<String> = db
            .faces()
            .flat_map(|f| f.families.iter().map(|(n, _)| n.clone()))
            .collect();
        let pick = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial"]
            .iter()
            .find(|want| families.iter().any(|f| f == *want))
            .map(|s| s.to_string())
            .or_else(|| families.first().cloned());
        if let Some(f) = pick {
            db.set_sans_serif_family(f);
        }
    }
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| PngError::Svg(e.to_string()))?;
    let size = tree.size().to_int_size();
    if size.width() > 20_000 || size.height() > 20_000 {
        return Err(PngError::Size);
    }
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).ok_or(PngError::Size)?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap
        .encode_png()
        .map_err(|e| PngError::Encode(e.to_string()))
}

/// Writes `plot.png` next to `plot.svg`; returns the file name, or `None` (with a warning
/// on stderr) when rendering failed: the other outputs are still good.
pub fn write_png(dir: &Path, svg: &str) -> std::io::Result<Option<String>> {
    match svg_to_png(svg) {
        Ok(png) => {
            std::fs::write(dir.join("plot.png"), png)?;
            Ok(Some("plot.png".into()))
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "esplab: plot.png not written: {e}");
            Ok(None)
        }
    }
}

/// A progress bar on stderr for runs that take a while: drawn only when stderr is a
/// terminal and only after the run has taken `DELAY` of wall time, so quick runs and
/// scripts never see it.
pub struct Progress {
    start: Instant,
    tty: bool,
    shown: bool,
    label: String,
}

/// Wall time before the bar appears.
const DELAY: Duration = Duration::from_secs(2);
const WIDTH: usize = 30;

impl Progress {
    /// A bar for the scenario `label`.
    pub fn new(label: &str) -> Self {
        Progress {
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            shown: false,
            label: label.to_string(),
        }
    }

    /// The fraction `f` (0..=1) of the work is done.
    pub fn update(&mut self, f: f64) {
        if !self.tty || self.start.elapsed() < DELAY {
            return;
        }
        self.shown = true;
        let _ = write!(
            std::io::stderr(),
            "\r{}",
            bar(&self.label, f, self.start.elapsed())
        );
    }

    /// Clears the bar (if it was drawn).
    pub fn finish(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r{:width$}\r", "", width = WIDTH + 60);
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One line of the bar: `label [#####.....]  42%  3.1 s, ~4.3 s left`.
fn bar(label: &str, f: f64, elapsed: Duration) -> String {
    let f = f.clamp(0.0, 1.0);
    let done = (f * WIDTH as f64).round() as usize;
    let e = elapsed.as_secs_f64();
    let left = if f > 0.01 {
        format!(", ~{:.0} s left", e * (1.0 - f) / f)
    } else {
        String::new()
    };
    format!(
        "{label} [{}{}] {:>3.0}%  {e:.0} s{left}   ",
        "#".repeat(done),
        ".".repeat(WIDTH - done),
        f * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_shape() {
        let s = bar("hub-reboot", 0.5, Duration::from_secs(10));
        assert!(s.starts_with("hub-reboot [###############...............]  50%  10 s"));
        assert!(s.contains("~10 s left"));
        let s = bar("x", 2.0, Duration::from_secs(1));
        assert!(s.contains(&"#".repeat(WIDTH)) && s.contains("100%"));
    }

    #[test]
    fn svg_renders_to_png_with_ink_where_drawn() {
        let svg = r##"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="100%" height="100%" fill="white"/><rect x="0" y="0" width="10" height="20" fill="#ff0000"/></svg>"##;
        let png = svg_to_png(svg).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height.
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 40);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 20);
        assert!(matches!(svg_to_png("<svg"), Err(PngError::Svg(_))));
    }
}
