//! EXPORT … TO 'f.png': the picture's size follows the layout, and the colour at a known
//! pixel is on the right side of the diverging map (strongly positive attribution: red;
//! strongly negative: blue); joins get a panel per side; tabular data gets bar charts.

use ialgebra::exec::Session;
use ialgebra::output::picture::{BAR_COLUMN, GAP, MAP, TITLE, cell_rect};

use crate::common::*;

fn digits() -> Session {
    session(
        "LOAD MODEL cnn FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json';
         LOAD DATA digits FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy';
         LOAD MODEL mlp FROM 'models/cancer_mlp.safetensors' ARCH 'models/cancer_mlp.json';
         LOAD DATA cancer FROM 'data/cancer_test.csv' LABEL COLUMN diagnosis;",
    )
}

/// (width, height, RGB bytes) of a PNG file.
fn decode(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn pixel(img: &(u32, u32, Vec<u8>), x: u32, y: u32) -> (i32, i32, i32) {
    let at = ((y * img.0 + x) * 3) as usize;
    (img.2[at] as i32, img.2[at + 1] as i32, img.2[at + 2] as i32)
}

/// The colour at the middle of cell (r, c) of panel k of an 8×8 map.
fn cell(img: &(u32, u32, Vec<u8>), k: usize, r: usize, c: usize) -> (i32, i32, i32) {
    let (x0, y0, x1, y1) = cell_rect(k, (8, 8), (r, c));
    pixel(img, (x0 + x1) / 2, (y0 + y1) / 2)
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = root().join("target/test-scratch/pictures");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// Where a query's largest and smallest attribution are, as (row, col).
fn extremes(s: &mut Session, from: &str) -> ((usize, usize), (usize, usize)) {
    let top = query(
        s,
        &format!("SELECT row, col FROM {from} ORDER BY attribution DESC LIMIT 1"),
    );
    let bottom = query(
        s,
        &format!("SELECT row, col FROM {from} ORDER BY attribution ASC LIMIT 1"),
    );
    let rc = |df: &polars::prelude::DataFrame| (column_f64(df, "row")[0] as usize, column_f64(df, "col")[0] as usize);
    (rc(&top), rc(&bottom))
}

#[test]
fn heatmap_colours_follow_the_sign() {
    let mut s = digits();
    let path = scratch("ig17.png");
    let from = "cnn(digits[17]) USING integrated_gradients";
    s.execute(&format!("EXPORT SELECT * FROM {from} TO '{}'", path.display()))
        .unwrap();
    let img = decode(&path);
    assert_eq!((img.0, img.1), (GAP + MAP + GAP + BAR_COLUMN, GAP + TITLE + MAP + GAP));
    let ((pr, pc), (nr, nc)) = extremes(&mut s, from);
    let (r, g, b) = cell(&img, 0, pr, pc);
    assert!(
        r > b + 80 && r > g + 80,
        "the strongest positive pixel is red: {:?}",
        (r, g, b)
    );
    let (r, _, b) = cell(&img, 0, nr, nc);
    assert!(b > r + 40, "the most negative pixel is blue: {:?}", (r, b));
    // the colour bar: red at the top, blue at the bottom
    let bx = img.0 - BAR_COLUMN + 18;
    let (r, _, b) = pixel(&img, bx, GAP + TITLE + 2);
    assert!(r > b + 80);
    let (r, _, b) = pixel(&img, bx, GAP + TITLE + MAP - 3);
    assert!(b > r + 80);
}

#[test]
fn joins_get_a_panel_per_side_and_layers_per_channel() {
    let mut s = digits();
    let path = scratch("anti.png");
    let from = "cnn(digits[57]) ANTIJOIN cnn(digits[3]) USING integrated_gradients";
    s.execute(&format!("EXPORT SELECT * FROM {from} TO '{}'", path.display()))
        .unwrap();
    let img = decode(&path);
    assert_eq!(img.0, GAP + 2 * (MAP + GAP) + BAR_COLUMN);
    let top_b = query(
        &mut s,
        &format!("SELECT row, col FROM {from} ORDER BY b.attribution DESC LIMIT 1"),
    );
    let (r, _, b) = cell(
        &img,
        1,
        column_f64(&top_b, "row")[0] as usize,
        column_f64(&top_b, "col")[0] as usize,
    );
    assert!(
        r > b + 60,
        "the right side's strongest pixel is red in the second panel"
    );
    // a per-channel layer map: 16 channels of conv2 in rows of 6 panels
    let path = scratch("conv2.png");
    s.execute(&format!(
        "EXPORT SELECT * FROM cnn(digits[17]) AT LAYER conv2 USING gradcam(per_channel = true) TO '{}'",
        path.display()
    ))
    .unwrap();
    let img = decode(&path);
    assert_eq!(img.1, GAP + 3 * (TITLE + MAP + GAP));
}

#[test]
fn tabular_attributions_are_bar_charts() {
    let mut s = digits();
    let path = scratch("cancer.png");
    s.execute(&format!(
        "EXPORT SELECT * FROM mlp(cancer[0:2]) USING integrated_gradients TO '{}'",
        path.display()
    ))
    .unwrap();
    let img = decode(&path);
    // 30 bars of 12 pixels are taller than a heatmap
    assert_eq!(img.1, GAP + TITLE + 30 * 12 + GAP);
    // a picture needs coordinates: a clear error, and no file
    let bad = scratch("bad.png");
    let err = s
        .execute(&format!(
            "EXPORT SELECT input, sum(attribution) AS t FROM mlp(cancer[0:2]) USING saliency GROUP BY input TO '{}'",
            bad.display()
        ))
        .unwrap_err();
    assert!(err.message.contains("a picture needs `row`, `col`"), "{}", err.message);
    assert!(!bad.exists());
}

/// Maps of a photo dataset are drawn over the photo (de-normalised back to its colours),
/// with the photo itself in a panel before them: the photo panel's pixels are the photo's,
/// and where the map is zero the photo shows through.
#[test]
fn maps_of_photos_are_drawn_over_the_photo_beside_it() {
    let mut s = session(
        "LOAD MODEL resnet FROM 'tests/fixtures/zoo/resnet_basic.dynamic.onnx';
         LOAD DATA photos FROM 'data/photos' IMAGES RESIZE 72 CROP 64 NORMALIZE imagenet;",
    );
    let path = scratch("photo.png");
    s.execute(&format!(
        "EXPORT SELECT * FROM resnet(photos[0]) USING integrated_gradients(steps = 8) GRANULARITY pixel TO '{}'",
        path.display()
    ))
    .unwrap();
    let img = decode(&path);
    // Two panels (the photo, the map) and the colour bar.
    assert_eq!(
        (img.0, img.1),
        (GAP + 2 * (MAP + GAP) + BAR_COLUMN, GAP + TITLE + MAP + GAP)
    );
    // The photo's pixel (0, 0), de-normalised with ImageNet's statistics, in panel 0;
    // 64 pixels drawn 3 display pixels each.
    let values = query(
        &mut s,
        "SELECT channel, value FROM resnet(photos[0]) USING saliency WHERE row = 0 AND col = 0 ORDER BY channel",
    );
    let v = column_f64(&values, "value");
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let want: Vec<i32> = (0..3)
        .map(|c| ((v[c] * std[c] + mean[c]) * 255.0).round() as i32)
        .collect();
    let (x0, y0, _, _) = cell_rect(0, (64, 64), (0, 0));
    let got = pixel(&img, x0 + 1, y0 + 1);
    assert_eq!([got.0, got.1, got.2].to_vec(), want, "the photo panel shows the photo");
    // A pixel of the map whose attribution is tiny is (nearly) the photo's colour there.
    let quiet = query(
        &mut s,
        "SELECT row, col FROM resnet(photos[0]) USING integrated_gradients(steps = 8) GRANULARITY pixel
         ORDER BY abs(attribution) LIMIT 1",
    );
    let (r, c) = (
        column_f64(&quiet, "row")[0] as usize,
        column_f64(&quiet, "col")[0] as usize,
    );
    let (x, y, _, _) = cell_rect(1, (64, 64), (r, c));
    let (under_x, under_y, _, _) = cell_rect(0, (64, 64), (r, c));
    let (m, p) = (pixel(&img, x + 1, y + 1), pixel(&img, under_x + 1, under_y + 1));
    assert!(
        (m.0 - p.0).abs() <= 3 && (m.1 - p.1).abs() <= 3 && (m.2 - p.2).abs() <= 3,
        "map {m:?} over photo {p:?}"
    );
}
