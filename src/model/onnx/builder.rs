//! Graphs the engine writes itself in ONNX's terms (the BERT encoder of a text model),
//! translated exactly as a file is.

use super::*;

/// A graph the engine writes itself in ONNX's terms (the BERT encoder), translated
/// exactly as a file would be: one set of operators, hook points named by the outputs.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    consts: Vec<(String, Konst)>,
}

/// An attribute of a node the builder writes.
pub enum Attr<'a> {
    Int(&'a str, i64),
    Ints(&'a str, Vec<i64>),
    Float(&'a str, f32),
    Str(&'a str, &'a str),
}

impl GraphBuilder {
    pub fn constant(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) -> String {
        let data = data.into_iter().map(f64::from).collect();
        self.consts.push((
            name.to_string(),
            Konst {
                shape,
                data,
                int: false,
            },
        ));
        name.to_string()
    }

    /// Adds a node computing `output` (its hook-point name) and returns that name.
    pub fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: Vec<Attr>) -> String {
        let attribute = attrs
            .into_iter()
            .map(|a| match a {
                Attr::Int(name, i) => AttributeProto {
                    name: name.into(),
                    i,
                    ..Default::default()
                },
                Attr::Ints(name, ints) => AttributeProto {
                    name: name.into(),
                    ints,
                    ..Default::default()
                },
                Attr::Float(name, f) => AttributeProto {
                    name: name.into(),
                    f,
                    ..Default::default()
                },
                Attr::Str(name, v) => AttributeProto {
                    name: name.into(),
                    s: v.as_bytes().to_vec(),
                    ..Default::default()
                },
            })
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        output.to_string()
    }

    /// The model: `input` of sample shape `input_shape`, output `output`. Every node
    /// must translate (an error says which did not).
    pub fn build(
        self,
        source: &str,
        arch_name: &str,
        (input, input_shape): (&str, Vec<usize>),
        output: &str,
    ) -> Result<Model> {
        let imp = Importer {
            shown: source.to_string(),
            opset: 17,
            syms: self.consts.into_iter().map(|(n, k)| (n, Sym::Const(k))).collect(),
            layers: Vec::new(),
            aliases: BTreeMap::new(),
            failed: None,
        };
        let nodes = self.nodes;
        let model = imp.translate_graph((input, input_shape), &nodes, output, arch_name)?;
        if let Some(Op::Unsupported { reason }) = model
            .layers
            .iter()
            .map(|l| &l.op)
            .find(|op| matches!(op, Op::Unsupported { .. }))
        {
            return Err(Error::model(format!("internal: {reason}")));
        }
        Ok(model)
    }
}
