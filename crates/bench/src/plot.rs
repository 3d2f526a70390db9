//! Charts of a run, with plotters: each as a PNG (to look at) and an SVG (for the
//! HTML report). Text needs a TrueType font, read once from the system (DejaVu
//! Sans on Debian: `fonts-dejavu-core`) or from `BAKERY_BENCH_FONT`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers the font once; an error naming what to install when there is none.
fn font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates = std::env::var("BAKERY_BENCH_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|p| p.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(
            "no TrueType font for the plots: install fonts-dejavu-core or set BAKERY_BENCH_FONT"
                .into(),
        )
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

#[derive(Clone, Copy, Debug)]
pub enum Style {
    Line,
    Points,
    LineAndPoints,
    Dashed,
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
}

pub struct Chart<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    pub series: Vec<Series>,
    /// A logarithmic y axis (latencies spanning orders of magnitude).
    pub log_y: bool,
}

const COLORS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `chart` as `<dir>/<stem>.png` and `.svg`; the paths written.
pub fn draw(dir: &Path, stem: &str, chart: &Chart) -> anyhow::Result<Vec<PathBuf>> {
    font()?;
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    {
        // Drawn into memory and encoded by the `image` crate the photos already use
        // (plotters' own encoder would build a second, older `image`).
        let (width, height) = (960, 560);
        let mut pixels = vec![0u8; (width * height * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
            render(&root, chart)?;
            root.present()?;
        }
        image::RgbImage::from_raw(width, height, pixels)
            .ok_or_else(|| anyhow::anyhow!("a {width}x{height} picture"))?
            .save(&png)?;
    }
    {
        let root = SVGBackend::new(&svg, (960, 560)).into_drawing_area();
        render(&root, chart)?;
        root.present()?;
    }
    Ok(vec![png, svg])
}

fn render<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let all = chart.series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(1.0f64, f64::max) * 1.05;
    let y_max = all.clone().map(|p| p.1).fold(f64::MIN_POSITIVE, f64::max) * 1.15;
    let y_min = all.map(|p| p.1).filter(|y| *y > 0.0).fold(y_max, f64::min);
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(chart.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72);
    if chart.log_y {
        let c = builder
            .build_cartesian_2d(0f64..x_max, (y_min * 0.8..y_max * 1.5).log_scale())
            .map_err(err)?;
        fill(c, chart)
    } else {
        let c = builder
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(err)?;
        fill(c, chart)
    }
}

/// The mesh, every series and the legend, on either kind of y axis.
fn fill<'a, DB, X, Y>(
    mut c: ChartContext<'a, DB, Cartesian2d<X, Y>>,
    chart: &Chart,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    c.configure_mesh()
        .x_desc(chart.x)
        .y_desc(chart.y)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, series) in chart.series.iter().enumerate() {
        add(&mut c, series, COLORS[i % COLORS.len()])?;
    }
    legend(&mut c)
}

fn add<'a, DB, X, Y>(
    c: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    series: &Series,
    color: RGBColor,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let points = series.points.clone();
    let line = |style: ShapeStyle| {
        let name = series.name.clone();
        (name, style)
    };
    match series.style {
        Style::Line | Style::LineAndPoints => {
            let (name, style) = line(color.stroke_width(2));
            c.draw_series(LineSeries::new(points.clone(), style))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        Style::Dashed => {
            let (name, style) = line(color.stroke_width(1));
            c.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        Style::Points => {
            let name = series.name.clone();
            c.draw_series(points.iter().map(|p| Circle::new(*p, 5, color.filled())))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
    }
    if let Style::LineAndPoints = series.style {
        c.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(err)?;
    }
    Ok(())
}

fn legend<'a, DB, X, Y>(c: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn err<E: std::error::Error + Send + Sync + 'static>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e}")
}
