//! The schemas of every table a stage writes (docs/design.md "The data contract").
//! `schemas/NAME.json` holds each as a checked-in file; `tests/schemas.rs`
//! fails when the code drifts from it. The `huggingface` metadata key makes
//! `datasets` read `image` as an Image feature and `label` as a ClassLabel.
//! `datasets` only honours that metadata for a column whose Arrow field equals
//! its own, and its fields are all nullable: so every column that carries a
//! feature type (image, label, sequences) is declared nullable here, and the
//! writers guarantee non-null values where the table's doc says so.
//!
//! Besides the columns, the checked-in files hold the `fewlabels.*` schema
//! metadata a table's readers rely on ([`DESCRIBED_KEYS`]): `images` records
//! how its squares were made ([`RESIZE_KEY`]).
use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use serde_json::{json, Value};

use crate::codec::Geometry;

/// Metadata key holding the class names (JSON array) on every labelled table.
pub const CLASS_NAMES_KEY: &str = "fewlabels.class_names";
/// Metadata key read by Hugging Face `datasets`.
pub const HF_KEY: &str = "huggingface";
/// Metadata key of the images table holding how its squares were made
/// (`codec::Geometry` as JSON: resize policy, filter, pad colour). Tables
/// written before it existed lack it: they were centre crops with the
/// bilinear filter.
pub const RESIZE_KEY: &str = "fewlabels.resize";
/// The metadata keys the checked-in schemas describe (with their values).
pub const DESCRIBED_KEYS: [&str; 1] = [RESIZE_KEY];

/// The tables of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Images,
    Rejects,
    Labels,
    Features,
    PseudoLabels,
    Train,
    Duplicates,
    ShardRejects,
}

impl Table {
    pub const ALL: [Table; 8] = [
        Table::Images,
        Table::Rejects,
        Table::Labels,
        Table::Features,
        Table::PseudoLabels,
        Table::Train,
        Table::Duplicates,
        Table::ShardRejects,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Images => "images",
            Table::Rejects => "rejects",
            Table::Labels => "labels",
            Table::Features => "features",
            Table::PseudoLabels => "pseudo_labels",
            Table::Train => "train",
            Table::Duplicates => "duplicates",
            // Written as `train/rejects-*.arrow`, beside the training shards.
            Table::ShardRejects => "shard_rejects",
        }
    }
}

/// `struct<bytes: binary, path: string>`: the Image feature's storage type.
pub fn image_type() -> DataType {
    DataType::Struct(image_fields())
}

pub fn image_fields() -> Fields {
    Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ])
}

fn value(dtype: &str) -> Value {
    json!({"dtype": dtype, "_type": "Value"})
}

fn class_label(names: &[String]) -> Value {
    json!({"names": names, "_type": "ClassLabel"})
}

fn with_metadata(fields: Vec<Field>, features: Value, class_names: Option<&[String]>) -> SchemaRef {
    let mut md = HashMap::new();
    md.insert(
        HF_KEY.to_string(),
        json!({"info": {"features": features}}).to_string(),
    );
    if let Some(names) = class_names {
        md.insert(
            CLASS_NAMES_KEY.to_string(),
            serde_json::to_string(names).expect("names serialise"),
        );
    }
    Arc::new(Schema::new_with_metadata(fields, md))
}

/// `images/`: one row per prepared image.
pub fn images(class_names: &[String]) -> SchemaRef {
    with_metadata(
        vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("path", DataType::Utf8, false),
            Field::new("label", DataType::Int64, true),
            Field::new("width", DataType::Int32, false),
            Field::new("height", DataType::Int32, false),
            Field::new("image", image_type(), true),
        ],
        json!({
            "id": value("uint64"), "path": value("string"), "label": class_label(class_names),
            "width": value("int32"), "height": value("int32"), "image": {"_type": "Image"},
        }),
        Some(class_names),
    )
}

/// `schema` with `geometry` recorded under [`RESIZE_KEY`].
pub fn with_geometry(schema: &SchemaRef, geometry: &Geometry) -> SchemaRef {
    let mut md = schema.metadata().clone();
    md.insert(
        RESIZE_KEY.to_string(),
        serde_json::to_string(geometry).expect("geometry serialises"),
    );
    Arc::new(Schema::new_with_metadata(schema.fields().clone(), md))
}

/// How an images table's squares were made: its [`RESIZE_KEY`], or the
/// centre crop with the bilinear filter for a table written before the key.
pub fn geometry_of(schema: &Schema) -> Option<Geometry> {
    match schema.metadata().get(RESIZE_KEY) {
        Some(v) => serde_json::from_str(v).ok(),
        None => Some(Geometry::default()),
    }
}

/// `rejects`: every input that did not become an image, and why.
pub fn rejects() -> SchemaRef {
    with_metadata(
        vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
        ],
        json!({"path": value("string"), "reason": value("string")}),
        None,
    )
}

/// `labels/`: the kept labelled subset; `split` is `train` or `holdout`.
pub fn labels(class_names: &[String]) -> SchemaRef {
    with_metadata(
        vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("label", DataType::Int64, true),
            Field::new("split", DataType::Utf8, false),
        ],
        json!({"id": value("uint64"), "label": class_label(class_names), "split": value("string")}),
        Some(class_names),
    )
}

/// `features/`: one vector per image, plus the linear head's logits when the
/// extractor has one (`logits_dim` > 0).
pub fn features(dim: usize, logits_dim: usize) -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let mut fields = vec![
        Field::new("id", DataType::UInt64, false),
        Field::new(
            "feature",
            DataType::FixedSizeList(item.clone(), dim as i32),
            true,
        ),
    ];
    let mut features = json!({
        "id": value("uint64"),
        "feature": {"feature": value("float32"), "length": dim, "_type": "Sequence"},
    });
    if logits_dim > 0 {
        fields.push(Field::new(
            "logits",
            DataType::FixedSizeList(item, logits_dim as i32),
            true,
        ));
        features["logits"] =
            json!({"feature": value("float32"), "length": logits_dim, "_type": "Sequence"});
    }
    with_metadata(fields, features, None)
}

/// `pseudo_labels/`: one label per image with its source and confidence.
pub fn pseudo_labels(class_names: &[String]) -> SchemaRef {
    with_metadata(
        vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("label", DataType::Int64, true),
            Field::new("source", DataType::Utf8, false),
            Field::new("confidence", DataType::Float32, false),
        ],
        json!({
            "id": value("uint64"), "label": class_label(class_names),
            "source": value("string"), "confidence": value("float32"),
        }),
        Some(class_names),
    )
}

/// `train/`: shuffled training rows; `label` null = unlabelled.
pub fn train(class_names: &[String]) -> SchemaRef {
    with_metadata(
        vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("image", image_type(), true),
            Field::new("label", DataType::Int64, true),
            Field::new("label_source", DataType::Utf8, false),
        ],
        json!({
            "id": value("uint64"), "image": {"_type": "Image"},
            "label": class_label(class_names), "label_source": value("string"),
        }),
        Some(class_names),
    )
}

/// `duplicates/`: one row per duplicate pair. Row `id` of the images table
/// duplicates row `other_id` of `other_table`: `images` (an earlier row of
/// the same table) or `reference`; `distance` is the Hamming distance of
/// their pHashes, `kind` is `exact` (the same pixels) or `near`.
pub fn duplicates() -> SchemaRef {
    with_metadata(
        vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("other_table", DataType::Utf8, false),
            Field::new("other_id", DataType::UInt64, false),
            Field::new("distance", DataType::UInt8, false),
            Field::new("kind", DataType::Utf8, false),
        ],
        json!({
            "id": value("uint64"), "other_table": value("string"), "other_id": value("uint64"),
            "distance": value("uint8"), "kind": value("string"),
        }),
        None,
    )
}

/// `train/rejects-*.arrow`: the images rows `shard` left out of the
/// training shards (duplicates it was asked to drop), and why.
pub fn shard_rejects() -> SchemaRef {
    with_metadata(
        vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("path", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
        ],
        json!({"id": value("uint64"), "path": value("string"), "reason": value("string")}),
        None,
    )
}

/// The schema of `table` with placeholder class names and dimensions, as
/// checked into `schemas/`.
pub fn reference(table: Table) -> SchemaRef {
    let names = vec!["CLASS_0".to_string(), "CLASS_1".to_string()];
    match table {
        Table::Images => with_geometry(&images(&names), &Geometry::default()),
        Table::Rejects => rejects(),
        Table::Labels => labels(&names),
        Table::Features => features(8, 2),
        Table::PseudoLabels => pseudo_labels(&names),
        Table::Train => train(&names),
        Table::Duplicates => duplicates(),
        Table::ShardRejects => shard_rejects(),
    }
}

/// A schema as the JSON kept in `schemas/`: fields and the `huggingface` features.
pub fn describe(schema: &Schema) -> Value {
    let fields: Vec<Value> =
        schema.fields().iter().map(|f| json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()})).collect();
    let hf: Value = schema
        .metadata()
        .get(HF_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    let mut described = json!({"fields": fields, "huggingface": hf});
    let metadata: serde_json::Map<String, Value> = DESCRIBED_KEYS
        .iter()
        .filter_map(|k| {
            let v = schema.metadata().get(k)?;
            Some((k.to_string(), serde_json::from_str(v).unwrap_or(json!(v))))
        })
        .collect();
    if !metadata.is_empty() {
        described["metadata"] = Value::Object(metadata);
    }
    described
}

/// The class names stored in a table's metadata (empty when none).
pub fn class_names_of(schema: &Schema) -> Vec<String> {
    schema
        .metadata()
        .get(CLASS_NAMES_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}
