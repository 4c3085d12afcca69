//! Photos from a folder against torchvision (tests/fixtures/photos, written by
//! tools/make_photo_fixtures.py): ImageFolder order and labels, PIL's convert('RGB') of
//! grey and RGBA photos, Resize (Pillow's antialiased bilinear), CenterCrop, ToTensor,
//! Normalize. Decoders and resamplers differ by a least-significant bit or two, so the
//! bound is the issue's: mean |Δ| ≤ 0.02 and the 99th percentile ≤ 0.1, in normalised
//! units (the test prints both).

use crate::common::*;

fn differences(got: &[f64], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "value count");
    let mut d: Vec<f64> = got.iter().zip(want).map(|(g, w)| (g - w).abs()).collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    d.sort_by(f64::total_cmp);
    (mean, d[(d.len() as f64 * 0.99) as usize])
}

/// The values of a dataset, input by input, feature by feature (an identity query:
/// saliency's `value` column is the input).
fn values(s: &mut ialgebra::exec::Session, model: &str, data: &str) -> Vec<f64> {
    column_f64(
        &query(
            s,
            &format!("SELECT value FROM {model}({data}) USING saliency ORDER BY input, feature"),
        ),
        "value",
    )
}

#[test]
fn a_photo_folder_loads_like_torchvision_image_folder() {
    let mut s = session(
        "LOAD MODEL z FROM 'tests/fixtures/zoo/resnet_basic.dynamic.onnx';
         LOAD DATA photos FROM 'data/photos/' IMAGES RESIZE 64 CROP 56 NORMALIZE imagenet;",
    );
    let (shape, want) = npy(&fixture("photos/folder_x.npy"));
    assert_eq!(shape, [5, 3, 56, 56]);
    let (mean, p99) = differences(&values(&mut s, "z", "photos"), &want);
    eprintln!("folder: mean |Δ| {mean:.5}, 99th percentile {p99:.5}");
    assert!(mean <= 0.02 && p99 <= 0.1, "mean {mean}, p99 {p99}");
    let (_, labels) = npy(&fixture("photos/folder_y.npy"));
    let df = query(&mut s, "SELECT label FROM PREDICT z(photos)");
    assert_eq!(column_f64(&df, "label"), labels);
    let data = query(&mut s, "SHOW DATA");
    let source = column_str(&data, "source").join(" ");
    for what in [
        "5 photos of 4 classes",
        "animal",
        "space",
        "Resize(64)",
        "CenterCrop(56)",
        "Normalize(",
    ] {
        assert!(source.contains(what), "SHOW DATA says {source}");
    }
    // The folder may be written without its trailing slash.
    s.execute("LOAD DATA again FROM 'data/photos' IMAGES RESIZE 64 CROP 56 NORMALIZE imagenet")
        .unwrap();
    assert_eq!(values(&mut s, "z", "again"), values(&mut s, "z", "photos"));
}

#[test]
fn every_format_grey_and_rgba_become_rgb_as_pil_does() {
    let mut s = session(
        "LOAD MODEL z FROM 'tests/fixtures/zoo/resnet_basic.dynamic.onnx';
         LOAD DATA f FROM 'tests/fixtures/photos/formats' IMAGES RESIZE 40 CROP 32;
         LOAD DATA one FROM 'tests/fixtures/photos/formats/b_chelsea.webp' IMAGES RESIZE 40 CROP 32;
         LOAD DATA globbed FROM 'tests/fixtures/photos/formats/*.png' IMAGES RESIZE 40 CROP 32;",
    );
    let (shape, want) = npy(&fixture("photos/formats_x.npy"));
    assert_eq!(shape, [5, 3, 32, 32]);
    let got = values(&mut s, "z", "f");
    let per = 3 * 32 * 32;
    for (i, name) in ["bmp", "webp", "rgba png", "grey png", "jpeg"].iter().enumerate() {
        let (mean, p99) = differences(&got[i * per..(i + 1) * per], &want[i * per..(i + 1) * per]);
        eprintln!("{name}: mean |Δ| {mean:.5}, 99th percentile {p99:.5}");
        // Unnormalised values are in [0, 1]: the bound scaled by ImageNet's std (~0.226).
        assert!(
            mean <= 0.02 * 0.226 && p99 <= 0.1 * 0.226,
            "{name}: mean {mean}, p99 {p99}"
        );
    }
    assert_eq!(values(&mut s, "z", "one"), got[per..2 * per]);
    let png: Vec<f64> = got[2 * per..4 * per].to_vec();
    assert_eq!(
        values(&mut s, "z", "globbed"),
        png,
        "the glob takes the two PNGs in order"
    );
}

#[test]
fn bad_photos_are_errors_that_name_the_file() {
    let dir = std::env::temp_dir().join(format!("ialg-photos-{}", std::process::id()));
    let class = dir.join("broken");
    std::fs::create_dir_all(&class).unwrap();
    std::fs::write(class.join("not_really.jpg"), b"this is not a JPEG").unwrap();
    let mut s = session("");
    let d = dir.display();
    assert_errors(
        &mut s,
        &[
            (
                &format!("LOAD DATA p FROM '{d}' IMAGES"),
                "not_really.jpg is not a readable image",
            ),
            (
                "LOAD DATA p FROM 'data/photos' IMAGES",
                "photos of one dataset must end the same size",
            ),
            ("LOAD DATA p FROM 'data/photos' IMAGES", "RESIZE n CROP n"),
            (
                "LOAD DATA p FROM 'data/nothing_here/*.jpg' IMAGES",
                "cannot read the folder",
            ),
            ("LOAD DATA p FROM 'data/photos' IMAGES RESIZE 0", "not a size in pixels"),
            (
                "LOAD DATA p FROM 'data/photos' IMAGES NORMALIZE MEAN (0.5, 0.5, 0.5) STD (0.2, 0, 0.2)",
                "STD must be positive",
            ),
        ],
    );
    // Nothing half-loaded remains.
    assert!(s.execute("SHOW DATA").is_ok());
    assert!(query(&mut s, "SHOW DATA").height() == 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// CLASSES names a model's outputs (or a dataset's labels): PREDICT names each prediction,
/// every relation its target, also across a JOIN; a names file of the wrong length, or
/// labels past its names, are refused and leave the session as it was.
#[test]
fn class_names_give_predictions_and_relations_a_class_column() {
    let mut s = session(
        "LOAD MODEL resnet FROM 'tests/fixtures/zoo/resnet_basic.dynamic.onnx' CLASSES 'tests/fixtures/photos/zoo_classes.txt';
         LOAD DATA photos FROM 'data/photos' IMAGES RESIZE 72 CROP 64 NORMALIZE imagenet;",
    );
    let names: Vec<String> = std::fs::read_to_string(fixture("photos/zoo_classes.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let df = query(&mut s, "SELECT prediction, class FROM PREDICT resnet(photos)");
    let predictions = column_f64(&df, "prediction");
    let classes = column_str(&df, "class");
    for (p, c) in predictions.iter().zip(&classes) {
        assert_eq!(&names[*p as usize], c);
    }
    let df = query(
        &mut s,
        "SELECT DISTINCT class FROM resnet(photos[0]) USING saliency TARGET 3",
    );
    assert_eq!(column_str(&df, "class"), ["tiger shark"]);
    let df = query(
        &mut s,
        "SELECT * FROM resnet(photos[0]) AT LAYER layer4 USING gradcam TARGET 9",
    );
    assert!(column_str(&df, "class").iter().all(|c| c == "ostrich"));
    // The photo folder's own classes name its labels (SHOW DATA lists them).
    let data = query(&mut s, "SHOW DATA");
    assert_eq!(column_str(&data, "classes"), ["animal, drink, people, space"]);
    s.execute(
        "LOAD DATA photos FROM 'tests/fixtures/photos/formats' IMAGES RESIZE 40 CROP 32 CLASSES 'tests/fixtures/photos/two_classes.txt'",
    )
    .unwrap();
    assert_errors(
        &mut s,
        &[
            (
                "LOAD MODEL bad FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json' CLASSES 'tests/fixtures/photos/blank_line_classes.txt'",
                "line 2 is empty",
            ),
            (
                "LOAD MODEL bad FROM 'models/digits_cnn.safetensors' ARCH 'models/digits_cnn.json' CLASSES 'tests/fixtures/photos/two_classes.txt'",
                "names 2 classes but `bad` has 10 outputs",
            ),
            (
                "LOAD DATA photos FROM 'data/digits_test_x.npy' LABELS 'data/digits_test_y.npy' CLASSES 'tests/fixtures/photos/two_classes.txt'",
                "has label 9 but its CLASSES name only 2 classes",
            ),
        ],
    );
    // The refused load left `photos` as it was.
    assert_eq!(
        query(&mut s, "SHOW DATA")
            .column("shape")
            .unwrap()
            .str()
            .unwrap()
            .get(0),
        Some("[3, 32, 32]")
    );
}
