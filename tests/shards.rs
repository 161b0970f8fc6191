//! Arrow shard I/O: round trip, finished-ness, the checked-in schemas, and
//! the data contract as Python's pyarrow, polars and `datasets` see it.
mod common;

use std::fs;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use fewlabels::shard::schema::{self, Table};
use fewlabels::shard::{
    count_rows, image_bytes, image_column, open_shard, ShardFile, ShardWriter, TableReader,
    TableWriter,
};

fn png(r: u8, g: u8, b: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(4, 4, image::Rgb([r, g, b]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn images_batch(ids: &[u64], names: &[String]) -> RecordBatch {
    let pngs: Vec<Vec<u8>> = ids
        .iter()
        .map(|&i| png(i as u8 * 40, 0, 255 - i as u8 * 40))
        .collect();
    let paths: Vec<String> = ids.iter().map(|i| format!("class/{i}.png")).collect();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(ids.to_vec())),
        Arc::new(StringArray::from(paths.clone())),
        Arc::new(Int64Array::from(
            ids.iter()
                .map(|&i| if i == 2 { None } else { Some((i % 2) as i64) })
                .collect::<Vec<_>>(),
        )),
        Arc::new(Int32Array::from(vec![4; ids.len()])),
        Arc::new(Int32Array::from(vec![4; ids.len()])),
        image_column(
            pngs.iter()
                .zip(&paths)
                .map(|(b, p)| (b.as_slice(), Some(p.as_str()))),
        ),
    ];
    RecordBatch::try_new(schema::images(names), cols).unwrap()
}

fn names() -> Vec<String> {
    vec!["shirt".to_string(), "boot".to_string()]
}

#[test]
fn table_round_trips_across_shard_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = TableWriter::new(tmp.path(), "images", schema::images(&names()), 2);
    w.write(&images_batch(&[0, 1, 2], &names())).unwrap();
    w.write(&images_batch(&[3, 4], &names())).unwrap();
    let files = w.finish().unwrap();
    assert_eq!(
        files,
        vec![
            ("images-00000.arrow".into(), 2),
            ("images-00001.arrow".into(), 2),
            ("images-00002.arrow".into(), 1)
        ]
    );
    let paths = files.iter().map(|(f, _)| tmp.path().join(f)).collect();
    let mut ids = Vec::new();
    for batch in TableReader::new(paths, Some(&["id", "image"])) {
        let batch = batch.unwrap();
        assert_eq!(batch.num_columns(), 2);
        let id = batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        for i in 0..batch.num_rows() {
            ids.push(id.value(i));
            let decoded =
                image::load_from_memory(image_bytes(batch.column(1).as_ref(), i).unwrap())
                    .unwrap()
                    .to_rgb8();
            assert_eq!(
                decoded.get_pixel(0, 0).0,
                [id.value(i) as u8 * 40, 0, 255 - id.value(i) as u8 * 40]
            );
        }
    }
    assert_eq!(ids, vec![0, 1, 2, 3, 4]);
}

#[test]
fn unfinished_shard_is_invisible_and_unfinished_writer_unreadable() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("images-00000.arrow");
    let mut f = ShardFile::create(&path, &schema::images(&names())).unwrap();
    f.write(&images_batch(&[0, 1], &names())).unwrap();
    assert!(!path.exists(), "a shard is visible before finish");
    f.finish().unwrap();
    assert!(path.exists());
    // A stream cut short (no end-of-stream marker, a body cut) is refused by
    // the row count verification takes and by the readers.
    let mut w = ShardWriter::new(Vec::new(), &schema::images(&names())).unwrap();
    w.write(&images_batch(&[0], &names())).unwrap();
    let half = tmp.path().join("half.arrow");
    // Reach the bytes written so far through a finished copy's prefix.
    let finished = w.finish().unwrap();
    fs::write(&half, &finished[..finished.len() - 16]).unwrap();
    let e = count_rows(&half).unwrap_err().to_string();
    assert!(e.contains("not a complete Arrow IPC stream"), "{e}");
    let read: Result<Vec<_>, _> = open_shard(&half, None).unwrap().collect();
    assert!(read.is_err());
    assert!(fewlabels::shard::mapped::map_file(&half, None).is_err());
    // Without only its end-of-stream marker, too.
    fs::write(&half, &finished[..finished.len() - 8]).unwrap();
    assert!(count_rows(&half).is_err());
    assert_eq!(count_rows(&path).unwrap(), 2);
}

#[test]
fn schemas_match_checked_in_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let bless = std::env::var_os("FEWLABELS_BLESS").is_some();
    for table in Table::ALL {
        let got = serde_json::to_string_pretty(&schema::describe(&schema::reference(table)))
            .unwrap()
            + "\n";
        let path = dir.join(format!("{}.json", table.name()));
        if bless {
            fs::write(&path, &got).unwrap();
        }
        let want = fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{} missing; FEWLABELS_BLESS=1 cargo test writes it",
                path.display()
            )
        });
        assert_eq!(
            got,
            want,
            "schema of `{}` drifted from {}; if intended, re-bless with FEWLABELS_BLESS=1",
            table.name(),
            path.display()
        );
    }
}

#[test]
fn python_reads_shards_as_the_data_contract_says() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = TableWriter::new(tmp.path(), "images", schema::images(&names()), 100);
    w.write(&images_batch(&[0, 1, 2], &names())).unwrap();
    w.finish().unwrap();
    let file = tmp.path().join("images-00000.arrow");
    let script = r#"
import sys, pyarrow as pa, polars as pl, datasets
path = sys.argv[1]
t = pa.ipc.open_stream(path).read_all()
assert t.num_rows == 3, t.num_rows
assert t.column("id").to_pylist() == [0, 1, 2]
df = pl.read_ipc_stream(path)
assert df.shape[0] == 3 and df["label"].to_list() == [0, 1, None], df
ds = datasets.load_dataset("arrow", data_files=path, split="train")
f = ds.features
assert type(f["image"]).__name__ == "Image", f
assert type(f["label"]).__name__ == "ClassLabel", f
assert f["label"].names == ["shirt", "boot"], f["label"].names
img = ds[1]["image"]
assert img.size == (4, 4) and img.getpixel((0, 0)) == (40, 0, 215), img.getpixel((0, 0))
print("ok", f["label"].names)
"#;
    let o = common::python()
        .args(["-c", script, file.to_str().unwrap()])
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", tmp.path().join("hf"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok ['shirt', 'boot']"));
}

/// Tables are written as IPC streams (what `datasets` maps in place); a
/// table in the IPC file layout, as earlier versions wrote, reads the same
/// through every reader.
#[test]
fn tables_are_streams_and_file_layout_tables_still_read() {
    let tmp = tempfile::tempdir().unwrap();
    let sch = schema::images(&names());
    let stream = tmp.path().join("images-00000.arrow");
    let mut f = ShardFile::create(&stream, &sch).unwrap();
    f.write(&images_batch(&[0, 1], &names())).unwrap();
    f.write(&images_batch(&[2], &names())).unwrap();
    f.finish().unwrap();
    let bytes = fs::read(&stream).unwrap();
    assert_eq!(&bytes[..4], &[0xff; 4], "a stream starts with a message");
    assert_eq!(
        &bytes[bytes.len() - 8..],
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]
    );

    let file = tmp.path().join("old-00000.arrow");
    let mut w =
        arrow::ipc::writer::FileWriter::try_new(fs::File::create(&file).unwrap(), &sch).unwrap();
    w.write(&images_batch(&[0, 1], &names())).unwrap();
    w.write(&images_batch(&[2], &names())).unwrap();
    w.finish().unwrap();
    assert!(fs::read(&file).unwrap().starts_with(b"ARROW1"));

    let read = |p: &Path| -> Vec<RecordBatch> {
        TableReader::new(vec![p.to_path_buf()], Some(&["id", "label"]))
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(read(&stream), read(&file));
    assert_eq!(read(&stream).len(), 2);
    for p in [&stream, &file] {
        assert_eq!(count_rows(p).unwrap(), 3);
        let m = fewlabels::shard::mapped::map_file(p, Some(&["id", "label"])).unwrap();
        assert_eq!(m.batches, read(p));
        assert_eq!(m.schema.fields().len(), sch.fields().len());
        assert_eq!(open_shard(p, None).unwrap().schema(), sch);
    }
}
