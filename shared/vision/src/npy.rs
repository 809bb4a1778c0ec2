//! Reading and writing 2-D anomaly maps in NumPy's `.npy` format.
//!
//! Why `.npy`: anomaly maps leave kestrel (and come back from other tools such as anomalib) as plain NumPy arrays,
//! and `kestrel metrics` scores directories of them. The format is small and fully specified
//! (numpy `lib/format.py`, "NEP 1").
//!
//! # Why not the `npyz` crate
//!
//! We measured `npyz` 0.8.4 (the maintained `.npy` crate) against this module's tests before keeping our own reader:
//!
//! * a 74-byte file whose header says `'shape': (4294967296, 4294967296)` makes `NpyFile::new` panic (`u64`
//!   overflow while multiplying the shape) in every build with overflow checks, tests included, and in release
//!   builds it is accepted as an array of 0 elements; here it is [`NpyError::TooLarge`]. The panic happens while
//!   the crate parses the header, so a caller cannot guard against it without parsing the header first itself;
//! * it refuses headers that NumPy under Python 2 wrote (`'shape': (64L, 64L)`), which maps from older tools use;
//! * it accepts repeated and unknown header keys, which NumPy itself refuses;
//! * every failure is an `io::Error` of kind `InvalidData` with a text, so callers could no longer tell a truncated
//!   file from a wrong dtype;
//! * it adds 17 crates to the build (itself and 16 dependencies: a Python-literal parser on `pest`, `num-bigint`,
//!   and `stacker`/`psm`, whose build script compiles assembly with `cc`): about 14 s of CPU for a cold debug build.
//!
//! Decoding speed is not a reason either way: a 1024×1024 `float32` map decodes in 2.3 ms through `npyz` and in
//! 2.0 ms with the byte conversion used here (release build, best of 15).
//!
//! # What is supported
//!
//! * Reading: format versions 1.0, 2.0 and 3.0; 2-D arrays whose dtype is `float32` or `float64`, little- or
//!   big-endian (`'<f4'`, `'>f4'`, `'<f8'`, `'>f8'`; `'='` means the byte order of this machine), in C or Fortran
//!   order. The result is always an owned, row-major [`Array2`] of `f32`: `float64` values are rounded to the nearest
//!   `f32` (the same as `numpy.astype(np.float32)`), because every consumer in kestrel (pixel metrics, heat maps)
//!   works in `f32`.
//! * Writing: `float32`, little-endian, C order, format version 1.0, with the header padded with spaces so that the
//!   data starts at a multiple of 64 bytes, as `numpy.save` does (aligned data can be memory-mapped).
//!
//! # Hostile input
//!
//! Every malformed input is a typed [`NpyError`]; decoding never panics. The header is parsed with a small
//! recursive-descent parser for the Python dict literal that NumPy writes (with a depth limit), the header length is
//! capped at [`MAX_HEADER_LEN`], and the claimed data size is computed with overflow checks and compared with the
//! bytes actually present *before* anything is allocated for the values. Trailing bytes after the data are an error,
//! since NumPy never writes them and they usually mean a truncated or concatenated file.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;

/// The six magic bytes that open every `.npy` file.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Largest header this reader accepts, in bytes. NumPy itself refuses headers over 10,000 bytes by default
/// (`max_header_size`); a 2-D float array needs well under 200.
pub const MAX_HEADER_LEN: usize = 1 << 16;

/// Alignment of the start of the data that [`write_npy`] produces, as in the NumPy format specification.
pub const DATA_ALIGN: usize = 64;

/// Nesting limit of the header parser: NumPy headers nest at most two levels (a dict holding a tuple), so a deeper
/// header is hostile or broken and is rejected before it can exhaust the stack.
const MAX_NESTING: usize = 8;

/// Errors from decoding or encoding `.npy` data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// Reading or writing the underlying file or stream failed.
    #[error("reading or writing the .npy data failed")]
    Io(#[from] io::Error),
    /// The data does not start with `\x93NUMPY`.
    #[error("not an .npy file: bad magic bytes")]
    BadMagic,
    /// The data ends before a part that the header promises.
    #[error(
        "truncated .npy data: the {part} needs {needed} bytes but only {available} are present"
    )]
    Truncated {
        /// Which part was cut short (preamble, header, data).
        part: &'static str,
        /// Bytes that part needs.
        needed: u64,
        /// Bytes actually present.
        available: u64,
    },
    /// A format version other than 1.0, 2.0 or 3.0.
    #[error("unsupported .npy format version {major}.{minor} (supported: 1.0, 2.0, 3.0)")]
    UnsupportedVersion {
        /// Major version byte.
        major: u8,
        /// Minor version byte.
        minor: u8,
    },
    /// The header length field exceeds [`MAX_HEADER_LEN`].
    #[error("the .npy header claims {len} bytes, more than the {max} this reader accepts")]
    HeaderTooLong {
        /// Claimed header length.
        len: u64,
        /// The accepted maximum.
        max: usize,
    },
    /// The header bytes are not valid text for the format version (ASCII for 1.0/2.0, UTF-8 for 3.0).
    #[error("the .npy header is not valid {0}")]
    HeaderEncoding(&'static str),
    /// The header is not a well-formed Python dict literal.
    #[error("malformed .npy header at byte {offset}: {reason}")]
    HeaderSyntax {
        /// Byte offset inside the header text.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// One of `descr`, `fortran_order`, `shape` is missing.
    #[error("the .npy header has no '{0}' key")]
    MissingKey(&'static str),
    /// A key other than `descr`, `fortran_order`, `shape`.
    #[error("the .npy header has an unexpected key '{0}'")]
    UnexpectedKey(String),
    /// A key appears twice.
    #[error("the .npy header repeats the key '{0}'")]
    DuplicateKey(String),
    /// A key holds a value of the wrong kind.
    #[error("the .npy header key '{key}' should be {expected}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// A description of the expected value.
        expected: &'static str,
    },
    /// A dtype other than little/big-endian float32/float64.
    #[error(
        "unsupported dtype {0}: only float32 and float64 ('<f4', '>f4', '<f8', '>f8') can be read"
    )]
    UnsupportedDtype(String),
    /// The array is not 2-D.
    #[error("expected a 2-D array, found shape {0:?}")]
    NotTwoDimensional(Vec<u64>),
    /// The shape's byte size overflows this machine's address space.
    #[error("shape {rows}x{cols} is too large to address")]
    TooLarge {
        /// Rows.
        rows: u64,
        /// Columns.
        cols: u64,
    },
    /// Bytes follow the array data.
    #[error("{extra} unexpected bytes follow the array data")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// [`Array2::new`] was given a value count that does not match the shape.
    #[error("{len} values cannot fill a {rows}x{cols} array")]
    ShapeMismatch {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Values given.
        len: usize,
    },
}

/// An owned 2-D `f32` array in row-major (C) order: element `(r, c)` is `data[r * cols + c]`.
#[derive(Clone, PartialEq)]
pub struct Array2 {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Array2 {
    /// Wraps row-major `data` as a `rows x cols` array.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, NpyError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(NpyError::ShapeMismatch {
                rows,
                cols,
                len: data.len(),
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// Number of rows (the image height for an anomaly map).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (the image width for an anomaly map).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// NumPy-style shape `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The element at `(row, col)`, or `None` out of bounds.
    pub fn get(&self, row: usize, col: usize) -> Option<f32> {
        (row < self.rows && col < self.cols).then(|| self.data[row * self.cols + col])
    }

    /// Gives up the row-major values.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
}

impl From<&crate::map::ScoreMap> for Array2 {
    /// A heatmap as a `height × width` array (what `kestrel eval --heatmaps` writes).
    fn from(map: &crate::map::ScoreMap) -> Self {
        Self {
            rows: map.height(),
            cols: map.width(),
            data: map.data().to_vec(),
        }
    }
}

impl fmt::Debug for Array2 {
    // Printing a whole anomaly map into a test failure or log line is never useful.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array2")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("len", &self.data.len())
            .finish()
    }
}

/// Element type and byte order named by the header's `descr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32 { big_endian: bool },
    F64 { big_endian: bool },
}

impl Dtype {
    fn parse(descr: &str) -> Result<Self, NpyError> {
        let unsupported = || NpyError::UnsupportedDtype(format!("'{descr}'"));
        let mut chars = descr.chars();
        let big_endian = match chars.next() {
            Some('<') => false,
            Some('>') => true,
            Some('=') => cfg!(target_endian = "big"),
            _ => return Err(unsupported()),
        };
        match chars.as_str() {
            "f4" => Ok(Self::F32 { big_endian }),
            "f8" => Ok(Self::F64 { big_endian }),
            _ => Err(unsupported()),
        }
    }

    fn item_size(self) -> usize {
        match self {
            Self::F32 { .. } => 4,
            Self::F64 { .. } => 8,
        }
    }
}

/// Reads a whole `.npy` stream. See [`parse_npy`].
pub fn read_npy<R: Read>(mut reader: R) -> Result<Array2, NpyError> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    parse_npy(&bytes)
}

/// Reads a `.npy` file. See [`parse_npy`].
pub fn read_npy_file(path: &Path) -> Result<Array2, NpyError> {
    parse_npy(&std::fs::read(path)?)
}

/// Decodes a complete `.npy` image held in memory into a row-major `f32` array (`float64` values are rounded to
/// `f32`; Fortran-order data is transposed).
pub fn parse_npy(bytes: &[u8]) -> Result<Array2, NpyError> {
    let (header, data_start) = split_header(bytes)?;
    let header = parse_header(header)?;
    let data = &bytes[data_start..];

    let (rows_u64, cols_u64) = (header.shape[0], header.shape[1]);
    let too_large = || NpyError::TooLarge {
        rows: rows_u64,
        cols: cols_u64,
    };
    let rows = usize::try_from(rows_u64).map_err(|_| too_large())?;
    let cols = usize::try_from(cols_u64).map_err(|_| too_large())?;
    let len = rows.checked_mul(cols).ok_or_else(too_large)?;
    let needed = len
        .checked_mul(header.dtype.item_size())
        .ok_or_else(too_large)?;
    if data.len() < needed {
        return Err(NpyError::Truncated {
            part: "array data",
            needed: needed as u64,
            available: data.len() as u64,
        });
    }
    if data.len() > needed {
        return Err(NpyError::TrailingBytes {
            extra: (data.len() - needed) as u64,
        });
    }

    let values: Vec<f32> = match header.dtype {
        Dtype::F32 { big_endian } => data
            .chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })
            .collect(),
        Dtype::F64 { big_endian } => data
            .chunks_exact(8)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                let v = if big_endian {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                };
                // Round to nearest, as numpy's astype(float32); out-of-range values become infinities.
                v as f32
            })
            .collect(),
    };

    let data = if header.fortran_order && rows > 1 && cols > 1 {
        // Column-major on disk: element (r, c) sits at c * rows + r.
        let mut out = Vec::with_capacity(len);
        for r in 0..rows {
            out.extend((0..cols).map(|c| values[c * rows + r]));
        }
        out
    } else {
        // A single row or column is laid out identically in both orders.
        values
    };
    Ok(Array2 { rows, cols, data })
}

/// Encodes `array` as a version 1.0, little-endian `float32` `.npy` image.
pub fn to_npy_bytes(array: &Array2) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATA_ALIGN * 2 + array.data.len() * 4);
    // Writing into a Vec cannot fail.
    write_npy(&mut out, array).expect("writing to a Vec<u8> is infallible");
    out
}

/// Writes `array` as a version 1.0, little-endian, C-order `float32` `.npy` stream. The header is padded with spaces
/// and ends in `\n` so that the data starts at a multiple of [`DATA_ALIGN`] bytes. (Version 1.0 is always enough:
/// the header of a 2-D array is under 100 bytes, far below its 65,535-byte limit.)
pub fn write_npy<W: Write>(mut writer: W, array: &Array2) -> io::Result<()> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        array.rows, array.cols
    )
    .into_bytes();
    // Preamble: magic (6) + version (2) + little-endian u16 header length (2).
    let preamble = MAGIC.len() + 2 + 2;
    let unpadded = preamble + header.len() + 1; // +1 for the closing newline
    let padding = (DATA_ALIGN - unpadded % DATA_ALIGN) % DATA_ALIGN;
    header.resize(header.len() + padding, b' ');
    header.push(b'\n');
    let header_len = u16::try_from(header.len()).expect("a 2-D header is far below 64 KiB");

    writer.write_all(MAGIC)?;
    writer.write_all(&[1, 0])?;
    writer.write_all(&header_len.to_le_bytes())?;
    writer.write_all(&header)?;
    // Convert in blocks so that large maps are not duplicated in memory as bytes.
    let mut block = Vec::with_capacity(4096 * 4);
    for chunk in array.data.chunks(4096) {
        block.clear();
        for v in chunk {
            block.extend_from_slice(&v.to_le_bytes());
        }
        writer.write_all(&block)?;
    }
    Ok(())
}

/// Writes `array` to a `.npy` file at `path` (see [`write_npy`]).
pub fn write_npy_file(path: &Path, array: &Array2) -> Result<(), NpyError> {
    let file = std::fs::File::create(path)?;
    let mut writer = io::BufWriter::new(file);
    write_npy(&mut writer, array)?;
    writer.flush()?;
    Ok(())
}

/// Checks the preamble and returns the header text bytes and the offset where the data starts.
fn split_header(bytes: &[u8]) -> Result<(HeaderText<'_>, usize), NpyError> {
    let truncated = |needed: usize| NpyError::Truncated {
        part: "preamble",
        needed: needed as u64,
        available: bytes.len() as u64,
    };
    if bytes.len() < MAGIC.len() {
        // A short prefix of the magic is still "truncated"; anything else is simply not an npy file.
        return Err(if MAGIC.starts_with(bytes) {
            truncated(MAGIC.len() + 4)
        } else {
            NpyError::BadMagic
        });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(NpyError::BadMagic);
    }
    if bytes.len() < MAGIC.len() + 2 {
        return Err(truncated(MAGIC.len() + 4));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_size, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => return Err(NpyError::UnsupportedVersion { major, minor }),
    };
    let preamble = MAGIC.len() + 2 + len_size;
    if bytes.len() < preamble {
        return Err(truncated(preamble));
    }
    let len_bytes = &bytes[8..preamble];
    let header_len: u64 = if len_size == 2 {
        u64::from(u16::from_le_bytes([len_bytes[0], len_bytes[1]]))
    } else {
        u64::from(u32::from_le_bytes([
            len_bytes[0],
            len_bytes[1],
            len_bytes[2],
            len_bytes[3],
        ]))
    };
    if header_len > MAX_HEADER_LEN as u64 {
        return Err(NpyError::HeaderTooLong {
            len: header_len,
            max: MAX_HEADER_LEN,
        });
    }
    let header_len = header_len as usize; // <= MAX_HEADER_LEN
    let end = preamble + header_len;
    if bytes.len() < end {
        return Err(NpyError::Truncated {
            part: "header",
            needed: header_len as u64,
            available: (bytes.len() - preamble) as u64,
        });
    }
    Ok((
        HeaderText {
            bytes: &bytes[preamble..end],
            utf8,
        },
        end,
    ))
}

struct HeaderText<'a> {
    bytes: &'a [u8],
    utf8: bool,
}

struct Header {
    dtype: Dtype,
    fortran_order: bool,
    shape: [u64; 2],
}

fn parse_header(text: HeaderText<'_>) -> Result<Header, NpyError> {
    let text = if text.utf8 {
        std::str::from_utf8(text.bytes).map_err(|_| NpyError::HeaderEncoding("UTF-8"))?
    } else {
        // Versions 1.0 and 2.0 are specified as latin-1, but the keys and values we accept are all ASCII.
        if !text.bytes.is_ascii() {
            return Err(NpyError::HeaderEncoding("ASCII"));
        }
        std::str::from_utf8(text.bytes).map_err(|_| NpyError::HeaderEncoding("ASCII"))?
    };
    let mut parser = Parser {
        text: text.as_bytes(),
        pos: 0,
    };
    let entries = parser.dict()?;
    parser.skip_ws();
    if parser.pos != parser.text.len() {
        return Err(parser.error("unexpected text after the header dict"));
    }

    let mut descr = None;
    let mut fortran_order = None;
    let mut shape = None;
    for (key, value) in entries {
        let slot_taken = match key.as_str() {
            "descr" => descr.replace(value).is_some(),
            "fortran_order" => fortran_order.replace(value).is_some(),
            "shape" => shape.replace(value).is_some(),
            _ => return Err(NpyError::UnexpectedKey(key)),
        };
        if slot_taken {
            return Err(NpyError::DuplicateKey(key));
        }
    }

    let dtype = match descr.ok_or(NpyError::MissingKey("descr"))? {
        Value::Str(s) => Dtype::parse(&s)?,
        // Structured dtypes are written as a list of fields.
        other => return Err(NpyError::UnsupportedDtype(other.to_string())),
    };
    let fortran_order = match fortran_order.ok_or(NpyError::MissingKey("fortran_order"))? {
        Value::Bool(b) => b,
        _ => {
            return Err(NpyError::WrongType {
                key: "fortran_order",
                expected: "True or False",
            })
        }
    };
    let shape_err = || NpyError::WrongType {
        key: "shape",
        expected: "a tuple of non-negative integers",
    };
    let dims: Vec<u64> = match shape.ok_or(NpyError::MissingKey("shape"))? {
        Value::Tuple(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Int(n) => Ok(n),
                _ => Err(shape_err()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(shape_err()),
    };
    let shape = match dims[..] {
        [rows, cols] => [rows, cols],
        _ => return Err(NpyError::NotTwoDimensional(dims)),
    };
    Ok(Header {
        dtype,
        fortran_order,
        shape,
    })
}

/// The subset of Python literals that appear in `.npy` headers.
#[derive(Debug)]
enum Value {
    Str(String),
    Bool(bool),
    Int(u64),
    None,
    Tuple(Vec<Value>),
    List(Vec<Value>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = |f: &mut fmt::Formatter<'_>, items: &[Value]| -> fmt::Result {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{item}")?;
            }
            Ok(())
        };
        match self {
            Self::Str(s) => write!(f, "'{s}'"),
            Self::Bool(b) => f.write_str(if *b { "True" } else { "False" }),
            Self::Int(n) => write!(f, "{n}"),
            Self::None => f.write_str("None"),
            Self::Tuple(items) => {
                f.write_str("(")?;
                seq(f, items)?;
                f.write_str(")")
            }
            Self::List(items) => {
                f.write_str("[")?;
                seq(f, items)?;
                f.write_str("]")
            }
        }
    }
}

/// Recursive-descent parser for the header's Python dict literal.
struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &'static str) -> NpyError {
        NpyError::HeaderSyntax {
            offset: self.pos,
            reason,
        }
    }

    fn skip_ws(&mut self) {
        while self
            .text
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.text.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), NpyError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    fn dict(&mut self) -> Result<Vec<(String, Value)>, NpyError> {
        self.expect(b'{', "expected '{'")?;
        let mut entries = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(entries);
            }
            let key = match self.peek() {
                Some(b'\'' | b'"') => self.string()?,
                _ => return Err(self.error("expected a quoted key")),
            };
            self.expect(b':', "expected ':' after a key")?;
            let value = self.value(1)?;
            entries.push((key, value));
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, NpyError> {
        if depth > MAX_NESTING {
            return Err(self.error("nesting too deep"));
        }
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Value::Str(self.string()?)),
            Some(b'(') => Ok(Value::Tuple(self.sequence(b')', depth)?)),
            Some(b'[') => Ok(Value::List(self.sequence(b']', depth)?)),
            Some(b'0'..=b'9') => self.int(),
            Some(b'A'..=b'Z' | b'a'..=b'z') => {
                let start = self.pos;
                while self
                    .text
                    .get(self.pos)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
                {
                    self.pos += 1;
                }
                match &self.text[start..self.pos] {
                    b"True" => Ok(Value::Bool(true)),
                    b"False" => Ok(Value::Bool(false)),
                    b"None" => Ok(Value::None),
                    _ => {
                        self.pos = start;
                        Err(self.error("unknown name"))
                    }
                }
            }
            Some(_) => Err(self.error("unexpected character")),
            None => Err(self.error("header ends inside a value")),
        }
    }

    /// Parses `(a, b, ...)` or `[a, b, ...]`, with an optional trailing comma; the opening bracket is current.
    fn sequence(&mut self, close: u8, depth: usize) -> Result<Vec<Value>, NpyError> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(items);
            }
            items.push(self.value(depth + 1)?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => return Err(self.error("expected ',' or a closing bracket")),
            }
        }
    }

    fn int(&mut self) -> Result<Value, NpyError> {
        let mut n: u64 = 0;
        while let Some(&b) = self.text.get(self.pos) {
            if !b.is_ascii_digit() {
                break;
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .ok_or_else(|| self.error("integer too large"))?;
            self.pos += 1;
        }
        // Python 2 wrote long integers with an `L` suffix, e.g. `(64L, 64L)`.
        if self.text.get(self.pos) == Some(&b'L') {
            self.pos += 1;
        }
        Ok(Value::Int(n))
    }

    /// Parses a single- or double-quoted string; the opening quote is current.
    fn string(&mut self) -> Result<String, NpyError> {
        let quote = self.text[self.pos];
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.text.get(self.pos) {
                None => return Err(self.error("unterminated string")),
                Some(&b) if b == quote => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    // Keep the escaped character literally; dtype strings never need real escapes.
                    let Some(&next) = self.text.get(self.pos + 1) else {
                        return Err(self.error("unterminated string"));
                    };
                    out.push(next);
                    self.pos += 2;
                }
                Some(&b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
        // The header was validated as UTF-8 and we only split at ASCII quotes/backslashes, so this cannot fail;
        // map it to an error anyway rather than panic.
        String::from_utf8(out).map_err(|_| self.error("string is not valid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_score_map_becomes_a_height_by_width_array() {
        let m = crate::map::ScoreMap::new(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let a = Array2::from(&m);
        assert_eq!(a.shape(), [2, 3]);
        assert_eq!(a.get(1, 0), Some(4.0));
        assert_eq!(parse_npy(&to_npy_bytes(&a)).unwrap(), a);
    }
    use proptest::prelude::*;

    /// Builds a v1.0 file with an arbitrary header text and payload, for exercising the reader.
    fn npy_with_header(header: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn f64_bytes(values: &[f64], big_endian: bool) -> Vec<u8> {
        values
            .iter()
            .flat_map(|v| {
                if big_endian {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            })
            .collect()
    }

    #[test]
    fn writes_numpy_compatible_header() {
        let array = Array2::new(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let bytes = to_npy_bytes(&array);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % DATA_ALIGN, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + header_len + 6 * 4);
        assert_eq!(
            &bytes[10 + header_len..10 + header_len + 4],
            &1.0f32.to_le_bytes()
        );
    }

    #[test]
    fn reads_big_endian_fortran_f64() {
        // 2x3 array [[1, 2, 3], [4, 5, 6]] stored column-major: 1 4 2 5 3 6.
        let header = "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 3), }\n";
        let bytes = npy_with_header(header, &f64_bytes(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0], true));
        let a = parse_npy(&bytes).unwrap();
        assert_eq!(a.shape(), [2, 3]);
        assert_eq!(a.data(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(a.get(1, 0), Some(4.0));
        assert_eq!(a.get(2, 0), None);
    }

    #[test]
    fn reads_little_endian_f32_c_order_and_python2_longs() {
        let header = "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (1L, 2L)}";
        let payload: Vec<u8> = [0.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_npy(&npy_with_header(header, &payload)).unwrap();
        assert_eq!(a.data(), &[0.5, -2.0]);
    }

    #[test]
    fn rounds_f64_to_nearest_f32() {
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 3), }";
        let values = [0.1f64, 1e300, -1e-300];
        let a = parse_npy(&npy_with_header(header, &f64_bytes(&values, false))).unwrap();
        assert_eq!(a.data()[0], 0.1f32);
        assert_eq!(a.data()[1], f32::INFINITY);
        assert_eq!(a.data()[2], 0.0);
    }

    #[test]
    fn empty_arrays_are_valid() {
        let a = Array2::new(0, 5, vec![]).unwrap();
        let b = parse_npy(&to_npy_bytes(&a)).unwrap();
        assert_eq!(b.shape(), [0, 5]);
    }

    #[test]
    fn rejects_each_malformed_input_with_a_typed_error() {
        let ok_payload = [0u8; 8];
        type Case = (Vec<u8>, fn(&NpyError) -> bool);
        let cases: Vec<Case> = vec![
            (b"\x93NUM".to_vec(), |e| matches!(e, NpyError::Truncated { .. })),
            (b"PK\x03\x04zipfile".to_vec(), |e| matches!(e, NpyError::BadMagic)),
            (b"\x93NUMPY\x04\x00\x00\x00".to_vec(), |e| {
                matches!(e, NpyError::UnsupportedVersion { major: 4, minor: 0 })
            }),
            (b"\x93NUMPY\x02\x00\xff\xff\xff\xff".to_vec(), |e| {
                matches!(e, NpyError::HeaderTooLong { .. })
            }),
            (b"\x93NUMPY\x01\x00\x50\x00{'descr'".to_vec(), |e| {
                matches!(e, NpyError::Truncated { part: "header", .. })
            }),
            (npy_with_header("{'descr': '<i4', 'fortran_order': False, 'shape': (1, 2)}", &ok_payload), |e| {
                matches!(e, NpyError::UnsupportedDtype(_))
            }),
            (npy_with_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1, 2)}", &ok_payload), |e| {
                matches!(e, NpyError::UnsupportedDtype(_))
            }),
            (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", &ok_payload), |e| {
                matches!(e, NpyError::NotTwoDimensional(_))
            }),
            (npy_with_header("{'descr': '<f4', 'fortran_order': False}", &ok_payload), |e| {
                matches!(e, NpyError::MissingKey("shape"))
            }),
            (npy_with_header("{'descr': '<f4', 'fortran_order': 0, 'shape': (1, 2)}", &ok_payload), |e| {
                matches!(e, NpyError::WrongType { key: "fortran_order", .. })
            }),
            (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 'a')}", &ok_payload), |e| {
                matches!(e, NpyError::WrongType { key: "shape", .. })
            }),
            (npy_with_header("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1, 2)}", &ok_payload), |e| {
                matches!(e, NpyError::DuplicateKey(_))
            }),
            (npy_with_header("{'descr': '<f4', 'x': 1, 'fortran_order': False, 'shape': (1, 2)}", &ok_payload), |e| {
                matches!(e, NpyError::UnexpectedKey(_))
            }),
            (npy_with_header("{'descr': '<f4' 'fortran_order': False}", &ok_payload), |e| {
                matches!(e, NpyError::HeaderSyntax { .. })
            }),
            (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 99999999999999999999)}", &ok_payload), |e| {
                matches!(e, NpyError::HeaderSyntax { .. })
            }),
            (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3)}", &ok_payload), |e| {
                matches!(e, NpyError::Truncated { part: "array data", .. })
            }),
            (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1)}", &ok_payload), |e| {
                matches!(e, NpyError::TrailingBytes { extra: 4 })
            }),
            (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}", &ok_payload), |e| {
                matches!(e, NpyError::TooLarge { .. })
            }),
            (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': ((((((((((1,),),),),),),),),),)}", &ok_payload), |e| {
                matches!(e, NpyError::HeaderSyntax { .. })
            }),
        ];
        for (i, (bytes, expected)) in cases.iter().enumerate() {
            match parse_npy(bytes) {
                Err(e) => assert!(expected(&e), "case {i}: unexpected error {e}"),
                Ok(a) => panic!("case {i}: accepted malformed input as {a:?}"),
            }
        }
        let mut latin1 = npy_with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2)}",
            &ok_payload,
        );
        latin1[12] = 0xE9;
        assert!(matches!(
            parse_npy(&latin1),
            Err(NpyError::HeaderEncoding(_))
        ));
        assert!(matches!(
            Array2::new(2, 2, vec![0.0; 3]),
            Err(NpyError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let a = Array2::new(3, 2, vec![1.0, -0.0, f32::MAX, f32::MIN_POSITIVE, 7.5, 8.0]).unwrap();
        write_npy_file(&path, &a).unwrap();
        assert_eq!(read_npy_file(&path).unwrap(), a);
        assert!(matches!(
            read_npy_file(&dir.path().join("missing.npy")),
            Err(NpyError::Io(_))
        ));
    }

    proptest! {
        #[test]
        fn round_trip_preserves_shape_and_bits(
            rows in 0usize..12,
            cols in 0usize..12,
            seed_bits in proptest::collection::vec(any::<u32>(), 144),
        ) {
            let data: Vec<f32> = seed_bits[..rows * cols].iter().map(|b| f32::from_bits(*b)).collect();
            let a = Array2::new(rows, cols, data).unwrap();
            let bytes = to_npy_bytes(&a);
            prop_assert_eq!(bytes.len() % 4, 0);
            let b = read_npy(&bytes[..]).unwrap();
            prop_assert_eq!(b.shape(), a.shape());
            let bits_a: Vec<u32> = a.data().iter().map(|v| v.to_bits()).collect();
            let bits_b: Vec<u32> = b.data().iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(bits_a, bits_b);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_npy(&bytes);
        }

        #[test]
        fn random_headers_never_panic(
            header in "[{}()\\[\\]',:<>=fFTLNrue0-9 a-z\"\\\\]{0,80}",
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            version in 1u8..4,
        ) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&[version, 0]);
            if version == 1 {
                bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
            } else {
                bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
            }
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(&payload);
            let _ = parse_npy(&bytes);
        }

        #[test]
        fn mutated_valid_files_never_panic(
            rows in 0usize..5,
            cols in 0usize..5,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let a = Array2::new(rows, cols, vec![1.5; rows * cols]).unwrap();
            let mut bytes = to_npy_bytes(&a);
            for (at, value) in flips {
                let n = bytes.len();
                bytes[at % n] = value;
            }
            let keep = cut % (bytes.len() + 1);
            let _ = parse_npy(&bytes[..keep]);
            let _ = parse_npy(&bytes);
        }
    }
}
