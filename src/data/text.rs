//! Text for BERT-family models: the model's own tokenizer (tokenizer.json through the
//! `tokenizers` crate), one sentence per input, [CLS] … [SEP] padded with [PAD] to the
//! model's fixed length.

use std::path::Path;

use crate::error::{Error, Result};

/// A tokenizer and the special tokens the engine needs.
pub struct TextCodec {
    tokenizer: tokenizers::Tokenizer,
    /// Inputs are padded (or truncated) to this many tokens.
    pub max_tokens: usize,
    pub pad_id: u32,
    pub mask_id: Option<u32>,
    /// [CLS], [SEP] and the like: kept in every baseline.
    pub special_ids: Vec<u32>,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextCodec({} tokens)", self.max_tokens)
    }
}

/// One text, tokenized.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// Token ids, [CLS] … [SEP], without padding.
    pub ids: Vec<u32>,
    pub tokens: Vec<String>,
    /// The word each token belongs to (None for special tokens).
    pub words: Vec<Option<u32>>,
    /// Tokens dropped to fit `max_tokens`.
    pub dropped: usize,
}

impl TextCodec {
    pub fn load(path: &Path) -> Result<TextCodec> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("cannot read tokenizer {shown}: {e}")))?;
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::model(format!("{shown} is not a readable tokenizer.json: {e}")))?;
        // Padding and truncation are the engine's: one fixed length for all inputs.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::model(format!("{shown}: {e}")))?;
        let id = |t: &str| tokenizer.token_to_id(t);
        let pad_id = id("[PAD]")
            .or_else(|| id("<pad>"))
            .ok_or_else(|| Error::model(format!("{shown} has no [PAD] token")))?;
        let mask_id = id("[MASK]").or_else(|| id("<mask>"));
        let special_ids = ["[CLS]", "[SEP]", "<s>", "</s>"].iter().filter_map(|t| id(t)).collect();
        Ok(TextCodec {
            tokenizer,
            max_tokens: 512,
            pad_id,
            mask_id,
            special_ids,
        })
    }

    pub fn with_max_tokens(self, max_tokens: usize) -> TextCodec {
        TextCodec { max_tokens, ..self }
    }

    /// Tokenizes one text; longer ones lose tokens before the final [SEP].
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::data(format!("cannot tokenize {text:?}: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        let mut tokens = enc.get_tokens().to_vec();
        let mut words = enc.get_word_ids().to_vec();
        let mut dropped = 0;
        if ids.len() > self.max_tokens {
            dropped = ids.len() - self.max_tokens;
            keep_last(&mut ids, self.max_tokens);
            keep_last(&mut tokens, self.max_tokens);
            keep_last(&mut words, self.max_tokens);
        }
        Ok(Encoded {
            ids,
            tokens,
            words,
            dropped,
        })
    }

    /// The ids padded to `length` tokens, as a model's input values.
    pub fn padded_to(&self, ids: &[u32], length: usize) -> Vec<f32> {
        let mut row: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
        row.resize(length, self.pad_id as f32);
        row
    }

    /// The reference input of text attribution: every token but the special ones
    /// replaced by [PAD] (or [MASK]), as in Captum's BERT tutorials.
    pub fn baseline(&self, row: &[f32], with_mask: bool) -> Vec<f32> {
        let fill = if with_mask {
            self.mask_id.unwrap_or(self.pad_id)
        } else {
            self.pad_id
        } as f32;
        row.iter()
            .map(|&v| {
                if v == self.pad_id as f32 || self.special_ids.iter().any(|&s| s as f32 == v) {
                    v
                } else {
                    fill
                }
            })
            .collect()
    }
}

/// Cuts `v` to `n` items, keeping its last item (the closing [SEP]) last.
fn keep_last<T: Clone>(v: &mut Vec<T>, n: usize) {
    if let Some(last) = v.last().cloned() {
        v.truncate(n.saturating_sub(1));
        v.push(last);
    }
}

/// Loads texts — one per line of a .txt file, or column `column` of a .csv file (with
/// an optional integer label column) — tokenized by `codec` and padded to its length.
/// Also returns how many texts lost tokens to fit.
pub fn load(
    name: &str,
    path: &Path,
    column: Option<&str>,
    label_column: Option<&str>,
    codec: &TextCodec,
) -> Result<(super::Dataset, usize)> {
    use polars::prelude::*;
    let shown = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
    let (texts, labels): (Vec<String>, Option<Vec<i64>>) = match ext.as_str() {
        "txt" => {
            if label_column.is_some() {
                return Err(Error::data(format!("{shown} is plain text: it has no label column")));
            }
            let body = std::fs::read_to_string(path).map_err(|e| Error::io(format!("cannot read {shown}: {e}")))?;
            (
                body.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string)
                    .collect(),
                None,
            )
        }
        "csv" => {
            let column = column
                .ok_or_else(|| Error::data(format!("say which column of {shown} holds the text: TEXT COLUMN name")))?;
            let df = CsvReadOptions::default()
                .with_infer_schema_length(None)
                .with_has_header(true)
                .try_into_reader_with_file_path(Some(path.to_path_buf()))
                .and_then(|r| r.finish())
                .map_err(|e| {
                    Error::data(format!(
                        "cannot read {shown}: {}",
                        e.to_string().lines().next().unwrap_or("")
                    ))
                })?;
            let names: Vec<String> = df.get_column_names().iter().map(|c| c.to_string()).collect();
            let col = |c: &str| {
                df.column(c).map_err(|_| {
                    Error::data(format!("{shown} has no column `{c}`"))
                        .hint(format!("its columns: {}", crate::error::list_names(&names, 12)))
                })
            };
            let texts = col(column)?
                .str()
                .map_err(|_| Error::data(format!("column `{column}` of {shown} does not hold text")))?
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    t.map(str::to_string)
                        .ok_or_else(|| Error::data(format!("row {i} of {shown} has no text in `{column}`")))
                })
                .collect::<Result<Vec<_>>>()?;
            let labels = label_column
                .map(|l| col(l).and_then(|c| super::column_i64(c, &shown)))
                .transpose()?;
            (texts, labels)
        }
        _ => {
            return Err(Error::data(format!("cannot tell the format of text file {shown}"))
                .hint("use .txt (one text per line) or .csv with TEXT COLUMN name"));
        }
    };
    if texts.is_empty() {
        return Err(Error::data(format!("{shown} holds no text")));
    }
    let (mut ids, mut tokens, mut words) = (Vec::new(), Vec::new(), Vec::new());
    let mut cut = 0;
    for t in &texts {
        let e = codec.encode(t)?;
        cut += usize::from(e.dropped > 0);
        ids.push(e.ids);
        tokens.push(e.tokens);
        words.push(e.words);
    }
    // Padded to the longest text, as sentence-transformers pads a batch: padding never
    // changes a result (the model masks it), and a shorter sequence costs less.
    let length = ids.iter().map(Vec::len).max().unwrap_or(0).max(2);
    let values: Vec<f32> = ids.iter().flat_map(|ids| codec.padded_to(ids, length)).collect();
    let modality = super::Modality::Text {
        tokens: std::sync::Arc::new(tokens),
        words: std::sync::Arc::new(words),
    };
    let ds = super::Dataset::new(name, &shown, vec![length], modality, values, labels)?;
    Ok((ds, cut))
}
