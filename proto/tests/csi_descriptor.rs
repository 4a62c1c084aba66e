//! `csi.proto` is the CSI spec v1.12.0, descriptor by descriptor.
//!
//! The test fetches the upstream spec module with `go mod download`, compiles
//! its `csi.proto` with protoc and compares the result with the descriptor
//! `build.rs` produced from ours: every message (nested ones too), field,
//! oneof, enum and value, service and method, the extension definitions, and
//! the options of each element as the bytes protoc encoded (prost-types drops
//! unknown extensions such as `(csi_secret)`, so options are read straight
//! off the wire). Every difference is reported with its path. Missing `go` or
//! `protoc` is a failure, never a skip.

use std::collections::BTreeMap;
use std::env;
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    ServiceDescriptorProto,
};

const SPEC_MODULE: &str = "github.com/container-storage-interface/spec@v1.12.0";
const CSI_FILE: &str = "csi.proto";

// ---------------------------------------------------------------- fetching

/// Downloads the spec module into the default Go module cache and returns
/// the folder holding its `csi.proto`.
fn upstream_spec_dir() -> PathBuf {
    let scratch = scratch_dir("go");
    let output = Command::new("go")
        .args(["mod", "download", "-json", SPEC_MODULE])
        .current_dir(&scratch)
        .env("GOWORK", "off")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `go` ({e}): this test needs the Go toolchain on PATH \
                 to fetch {SPEC_MODULE} and compare csi.proto with it"
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "`go mod download -json {SPEC_MODULE}` failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let dir =
        json_string(&stdout, "Dir").unwrap_or_else(|| panic!("no \"Dir\" in the output of go mod download:\n{stdout}"));
    let _ = fs::remove_dir_all(&scratch);
    PathBuf::from(dir)
}

/// Compiles the upstream `csi.proto` in `dir` into an encoded `FileDescriptorSet`.
fn compile_upstream(dir: &Path) -> Vec<u8> {
    let protoc = env::var("PROTOC").unwrap_or_else(|_| "protoc".to_string());
    let include = env::var("PROTOC_INCLUDE").unwrap_or_else(|_| "/usr/include".to_string());
    let scratch = scratch_dir("protoc");
    let out = scratch.join("upstream.bin");
    let output = Command::new(&protoc)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg("-I")
        .arg(dir)
        .arg("-I")
        .arg(&include)
        .arg(CSI_FILE)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{protoc}` ({e}): install protobuf-compiler and libprotobuf-dev"));
    assert!(
        output.status.success(),
        "protoc failed on the upstream csi.proto in {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = fs::read(&out).expect("protoc wrote the descriptor set it reported");
    let _ = fs::remove_dir_all(&scratch);
    bytes
}

/// A fresh, empty folder under the system temp dir.
fn scratch_dir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = env::temp_dir().join(format!("floe-proto-{what}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a scratch folder under the temp dir");
    dir
}

/// The string value of a top-level `"key": "..."` in `go`'s JSON output.
fn json_string(json: &str, key: &str) -> Option<String> {
    let rest = &json[json.find(&format!("\"{key}\""))? + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut chars = rest.strip_prefix('"')?.chars();
    let mut value = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => value.push(match chars.next()? {
                'n' => '\n',
                't' => '\t',
                other => other,
            }),
            c => value.push(c),
        }
    }
    None
}

// ------------------------------------------------------ raw options on the wire

/// One field value as encoded on the wire.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Wire {
    Varint(u64),
    Fixed64(u64),
    Bytes(Vec<u8>),
    Fixed32(u32),
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err(format!("want {n} bytes, have {}", buf.len()));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Splits an encoded message into (field number, value) pairs, in order.
fn wire_fields(mut buf: &[u8]) -> Result<Vec<(u64, Wire)>, String> {
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let key = read_varint(&mut buf)?;
        let value = match key & 7 {
            0 => Wire::Varint(read_varint(&mut buf)?),
            1 => Wire::Fixed64(u64::from_le_bytes(take(&mut buf, 8)?.try_into().expect("took 8 bytes"))),
            2 => {
                let len = usize::try_from(read_varint(&mut buf)?).map_err(|e| e.to_string())?;
                Wire::Bytes(take(&mut buf, len)?.to_vec())
            }
            5 => Wire::Fixed32(u32::from_le_bytes(take(&mut buf, 4)?.try_into().expect("took 4 bytes"))),
            other => return Err(format!("unsupported wire type {other}")),
        };
        fields.push((key >> 3, value));
    }
    Ok(fields)
}

/// The raw `options` of every element of one file, keyed by element path
/// (the same paths the comparator reports). Absent options have no entry.
type RawOptions = BTreeMap<String, Vec<u8>>;

/// Reads the fields of one descriptor: its name, its options and the
/// sub-descriptors under the given field numbers.
struct RawDescriptor {
    name: String,
    options: Option<Vec<u8>>,
    children: Vec<(u64, Vec<u8>)>,
}

fn raw_descriptor(buf: &[u8], options_field: u64) -> RawDescriptor {
    let mut raw = RawDescriptor {
        name: String::new(),
        options: None,
        children: Vec::new(),
    };
    for (number, value) in wire_fields(buf).expect("protoc emits well-formed descriptors") {
        let Wire::Bytes(bytes) = value else { continue };
        if number == 1 {
            raw.name = String::from_utf8_lossy(&bytes).into_owned();
        } else if number == options_field {
            raw.options = Some(bytes);
        } else {
            raw.children.push((number, bytes));
        }
    }
    raw
}

fn insert(out: &mut RawOptions, path: String, options: Option<Vec<u8>>) {
    if let Some(options) = options {
        out.insert(path, options);
    }
}

/// Raw options of the file named `file` inside an encoded `FileDescriptorSet`.
fn raw_options(set: &[u8], file: &str) -> RawOptions {
    let mut out = RawOptions::new();
    for (number, value) in wire_fields(set).expect("descriptor set is well-formed") {
        let (1, Wire::Bytes(bytes)) = (number, value) else {
            continue;
        };
        // FileDescriptorProto: package 2, message_type 4, enum_type 5,
        // service 6, extension 7, options 8.
        let raw = raw_descriptor(&bytes, 8);
        if raw.name != file {
            continue;
        }
        let package = raw
            .children
            .iter()
            .find(|(n, _)| *n == 2)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        insert(&mut out, format!("file {file}"), raw.options);
        for (number, child) in &raw.children {
            match number {
                4 => raw_message(child, &package, &mut out),
                5 => raw_enum(child, &package, &mut out),
                6 => raw_service(child, &package, &mut out),
                7 => raw_field(child, "extension", &package, &mut out),
                _ => {}
            }
        }
    }
    out
}

fn join(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_string()
    } else {
        format!("{scope}.{name}")
    }
}

fn raw_message(buf: &[u8], scope: &str, out: &mut RawOptions) {
    // DescriptorProto: field 2, nested_type 3, enum_type 4, extension 6,
    // options 7, oneof_decl 8.
    let raw = raw_descriptor(buf, 7);
    let full = join(scope, &raw.name);
    insert(out, format!("message {full}"), raw.options);
    for (number, child) in &raw.children {
        match number {
            2 => raw_field(child, "field", &full, out),
            3 => raw_message(child, &full, out),
            4 => raw_enum(child, &full, out),
            6 => raw_field(child, "extension", &full, out),
            8 => {
                let oneof = raw_descriptor(child, 2);
                insert(out, format!("oneof {full}.{}", oneof.name), oneof.options);
            }
            _ => {}
        }
    }
}

fn raw_field(buf: &[u8], kind: &str, scope: &str, out: &mut RawOptions) {
    let raw = raw_descriptor(buf, 8);
    insert(out, format!("{kind} {}", join(scope, &raw.name)), raw.options);
}

fn raw_enum(buf: &[u8], scope: &str, out: &mut RawOptions) {
    // EnumDescriptorProto: value 2, options 3; value options are field 3.
    let raw = raw_descriptor(buf, 3);
    let full = join(scope, &raw.name);
    insert(out, format!("enum {full}"), raw.options);
    for (number, child) in &raw.children {
        if *number == 2 {
            let value = raw_descriptor(child, 3);
            insert(out, format!("enum value {full}.{}", value.name), value.options);
        }
    }
}

fn raw_service(buf: &[u8], scope: &str, out: &mut RawOptions) {
    // ServiceDescriptorProto: method 2, options 3; method options are field 4.
    let raw = raw_descriptor(buf, 3);
    let full = join(scope, &raw.name);
    insert(out, format!("service {full}"), raw.options);
    for (number, child) in &raw.children {
        if *number == 2 {
            let method = raw_descriptor(child, 4);
            insert(out, format!("method {full}.{}", method.name), method.options);
        }
    }
}

// ------------------------------------------------------------- comparing

/// One side of the comparison: a decoded file and its raw options.
struct Side<'a> {
    file: &'a FileDescriptorProto,
    options: &'a RawOptions,
}

/// Collects differences (ours versus upstream) with the path of each.
#[derive(Default)]
struct Comparison {
    diffs: Vec<String>,
    /// Elements compared, to show the comparison was not vacuous.
    elements: usize,
    /// Elements whose options were set on either side.
    options_compared: usize,
    /// Custom option names by (options message, extension number).
    extension_names: BTreeMap<(String, u64), String>,
}

impl Comparison {
    fn value<T: PartialEq + Debug>(&mut self, path: &str, what: &str, ours: T, upstream: T) {
        if ours != upstream {
            self.diffs
                .push(format!("{path}: {what}: ours {ours:?}, upstream {upstream:?}"));
        }
    }

    /// Pairs the elements of two lists by name; reports the unpaired ones
    /// and any change of position. Returns the pairs in upstream order.
    fn pair<'a, T>(
        &mut self,
        kind: &str,
        scope: &str,
        name: impl Fn(&T) -> &str,
        ours: &'a [T],
        upstream: &'a [T],
    ) -> Vec<(String, &'a T, &'a T)> {
        let index = |list: &'a [T]| -> BTreeMap<&'a str, (usize, &'a T)> {
            let mut map = BTreeMap::new();
            for (i, item) in list.iter().enumerate() {
                map.insert(name(item), (i, item));
            }
            map
        };
        let (ours_by_name, upstream_by_name) = (index(ours), index(upstream));
        for name in ours_by_name.keys().filter(|n| !upstream_by_name.contains_key(*n)) {
            self.diffs.push(format!("{kind} {}: only in ours", join(scope, name)));
        }
        let mut pairs = Vec::new();
        for (i, item) in upstream.iter().enumerate() {
            let path = format!("{kind} {}", join(scope, name(item)));
            match ours_by_name.get(name(item)) {
                None => self.diffs.push(format!("{path}: missing from ours")),
                Some(&(j, mine)) => {
                    self.value(&path, "position", j, i);
                    self.elements += 1;
                    pairs.push((path, mine, item));
                }
            }
        }
        pairs
    }

    fn options(&mut self, path: &str, ours: &Side<'_>, upstream: &Side<'_>) {
        let (mine, theirs) = (ours.options.get(path), upstream.options.get(path));
        if mine.is_none() && theirs.is_none() {
            return;
        }
        self.options_compared += 1;
        let group = |raw: Option<&Vec<u8>>| -> BTreeMap<u64, Vec<Wire>> {
            let mut map: BTreeMap<u64, Vec<Wire>> = BTreeMap::new();
            for (number, value) in
                wire_fields(raw.map_or(&[][..], |r| r.as_slice())).expect("protoc emits well-formed options")
            {
                map.entry(number).or_default().push(value);
            }
            map.values_mut().for_each(|values| values.sort());
            map
        };
        let (mine_fields, their_fields) = (group(mine), group(theirs));
        let options_message = match path.split(' ').next().unwrap_or_default() {
            "file" => "FileOptions",
            "message" => "MessageOptions",
            "field" | "extension" => "FieldOptions",
            "oneof" => "OneofOptions",
            "enum" if path.starts_with("enum value ") => "EnumValueOptions",
            "enum" => "EnumOptions",
            "service" => "ServiceOptions",
            "method" => "MethodOptions",
            _ => "",
        };
        let mut numbers: Vec<u64> = mine_fields.keys().chain(their_fields.keys()).copied().collect();
        numbers.sort_unstable();
        numbers.dedup();
        for number in numbers {
            let label = match self.extension_names.get(&(options_message.to_string(), number)) {
                Some(name) => format!("option ({name}) #{number}"),
                None => format!("option #{number}"),
            };
            let (a, b) = (mine_fields.get(&number), their_fields.get(&number));
            self.value(path, &label, a, b);
        }
        if mine.is_some() != theirs.is_some() {
            self.value(path, "options present", mine.is_some(), theirs.is_some());
        }
    }

    fn file(&mut self, ours: &Side<'_>, upstream: &Side<'_>) {
        let (a, b) = (ours.file, upstream.file);
        let path = format!("file {}", b.name());
        self.elements += 1;
        for ext in &b.extension {
            let extendee = ext.extendee().rsplit('.').next().unwrap_or_default();
            self.extension_names.insert(
                (extendee.to_string(), u64::try_from(ext.number()).unwrap_or_default()),
                ext.name().to_string(),
            );
        }
        self.value(&path, "name", &a.name, &b.name);
        self.value(&path, "package", &a.package, &b.package);
        self.value(&path, "dependency", &a.dependency, &b.dependency);
        self.value(&path, "public_dependency", &a.public_dependency, &b.public_dependency);
        self.value(&path, "weak_dependency", &a.weak_dependency, &b.weak_dependency);
        self.value(&path, "syntax", &a.syntax, &b.syntax);
        self.options(&path, ours, upstream);
        let package = b.package();
        self.messages(package, &a.message_type, &b.message_type, ours, upstream);
        self.enums(package, &a.enum_type, &b.enum_type, ours, upstream);
        self.fields("extension", package, &a.extension, &b.extension, ours, upstream);
        self.services(package, &a.service, &b.service, ours, upstream);
    }

    fn messages(
        &mut self,
        scope: &str,
        ours: &[DescriptorProto],
        upstream: &[DescriptorProto],
        o: &Side<'_>,
        u: &Side<'_>,
    ) {
        for (path, a, b) in self.pair("message", scope, |m| m.name(), ours, upstream) {
            let full = join(scope, b.name());
            self.options(&path, o, u);
            self.value(&path, "extension_range", &a.extension_range, &b.extension_range);
            self.value(&path, "reserved_range", &a.reserved_range, &b.reserved_range);
            self.value(&path, "reserved_name", &a.reserved_name, &b.reserved_name);
            for (oneof_path, _, _) in self.pair("oneof", &full, |d| d.name(), &a.oneof_decl, &b.oneof_decl) {
                self.options(&oneof_path, o, u);
            }
            self.fields("field", &full, &a.field, &b.field, o, u);
            self.fields("extension", &full, &a.extension, &b.extension, o, u);
            self.enums(&full, &a.enum_type, &b.enum_type, o, u);
            self.messages(&full, &a.nested_type, &b.nested_type, o, u);
        }
    }

    fn fields(
        &mut self,
        kind: &str,
        scope: &str,
        ours: &[FieldDescriptorProto],
        upstream: &[FieldDescriptorProto],
        o: &Side<'_>,
        u: &Side<'_>,
    ) {
        for (path, a, b) in self.pair(kind, scope, |f| f.name(), ours, upstream) {
            self.value(&path, "number", a.number, b.number);
            self.value(&path, "label", a.label(), b.label());
            self.value(&path, "type", a.r#type(), b.r#type());
            self.value(&path, "type_name", &a.type_name, &b.type_name);
            self.value(&path, "extendee", &a.extendee, &b.extendee);
            self.value(&path, "default_value", &a.default_value, &b.default_value);
            self.value(&path, "oneof_index", a.oneof_index, b.oneof_index);
            self.value(&path, "json_name", &a.json_name, &b.json_name);
            self.value(&path, "proto3_optional", a.proto3_optional, b.proto3_optional);
            self.options(&path, o, u);
        }
    }

    fn enums(
        &mut self,
        scope: &str,
        ours: &[EnumDescriptorProto],
        upstream: &[EnumDescriptorProto],
        o: &Side<'_>,
        u: &Side<'_>,
    ) {
        for (path, a, b) in self.pair("enum", scope, |e| e.name(), ours, upstream) {
            let full = join(scope, b.name());
            self.options(&path, o, u);
            self.value(&path, "reserved_range", &a.reserved_range, &b.reserved_range);
            self.value(&path, "reserved_name", &a.reserved_name, &b.reserved_name);
            for (value_path, x, y) in self.pair("enum value", &full, |v| v.name(), &a.value, &b.value) {
                self.value(&value_path, "number", x.number, y.number);
                self.options(&value_path, o, u);
            }
        }
    }

    fn services(
        &mut self,
        scope: &str,
        ours: &[ServiceDescriptorProto],
        upstream: &[ServiceDescriptorProto],
        o: &Side<'_>,
        u: &Side<'_>,
    ) {
        for (path, a, b) in self.pair("service", scope, |s| s.name(), ours, upstream) {
            let full = join(scope, b.name());
            self.options(&path, o, u);
            for (method_path, x, y) in self.pair("method", &full, |m| m.name(), &a.method, &b.method) {
                self.value(&method_path, "input_type", &x.input_type, &y.input_type);
                self.value(&method_path, "output_type", &x.output_type, &y.output_type);
                self.value(&method_path, "client_streaming", x.client_streaming, y.client_streaming);
                self.value(&method_path, "server_streaming", x.server_streaming, y.server_streaming);
                self.options(&method_path, o, u);
            }
        }
    }
}

/// Compares two versions of one file; returns the differences found.
fn compare(ours: &Side<'_>, upstream: &Side<'_>) -> Comparison {
    let mut cmp = Comparison::default();
    cmp.file(ours, upstream);
    // Safety net for attributes the walk above does not name (e.g. ones a
    // newer descriptor.proto adds): the decoded descriptors, minus source
    // info, must be equal too.
    let strip = |f: &FileDescriptorProto| FileDescriptorProto {
        source_code_info: None,
        ..f.clone()
    };
    if cmp.diffs.is_empty() && strip(ours.file) != strip(upstream.file) {
        cmp.diffs.push(format!(
            "file {}: decoded descriptors differ in an attribute the comparator does not name",
            upstream.file.name()
        ));
    }
    cmp
}

/// The decoded `csi.proto` descriptor and its raw options from an encoded set.
fn load(set_bytes: &[u8]) -> (FileDescriptorProto, RawOptions) {
    let set = FileDescriptorSet::decode(set_bytes).expect("descriptor set decodes");
    let file = set
        .file
        .into_iter()
        .find(|f| f.name() == CSI_FILE)
        .expect("csi.proto is in the descriptor set");
    (file, raw_options(set_bytes, CSI_FILE))
}

// ---------------------------------------------------------------- tests

#[test]
fn csi_proto_matches_upstream_spec_v1_12_0() {
    let upstream_bytes = compile_upstream(&upstream_spec_dir());
    let (their_file, their_options) = load(&upstream_bytes);
    let (our_file, our_options) = load(floe_proto::csi::FILE_DESCRIPTOR_SET);

    let cmp = compare(
        &Side {
            file: &our_file,
            options: &our_options,
        },
        &Side {
            file: &their_file,
            options: &their_options,
        },
    );
    assert!(
        cmp.diffs.is_empty(),
        "csi.proto differs from {SPEC_MODULE} in {} place(s):\n  {}",
        cmp.diffs.len(),
        cmp.diffs.join("\n  ")
    );
    // Not vacuous: the spec has some 500 elements and dozens of
    // elements carrying (csi_secret) or alpha_* options.
    assert!(cmp.elements > 400, "only {} elements compared", cmp.elements);
    assert!(
        cmp.options_compared > 40,
        "only {} option sets compared",
        cmp.options_compared
    );
    println!(
        "csi.proto matches {SPEC_MODULE}: {} elements, {} option sets compared",
        cmp.elements, cmp.options_compared
    );
}

/// Our descriptor and its raw options, compared with a modified copy.
fn compare_with_ours(
    mutate_file: impl FnOnce(&mut FileDescriptorProto),
    mutate_options: impl FnOnce(&mut RawOptions),
) -> Vec<String> {
    let (file, options) = load(floe_proto::csi::FILE_DESCRIPTOR_SET);
    let (mut changed_file, mut changed_options) = (file.clone(), options.clone());
    mutate_file(&mut changed_file);
    mutate_options(&mut changed_options);
    compare(
        &Side {
            file: &changed_file,
            options: &changed_options,
        },
        &Side {
            file: &file,
            options: &options,
        },
    )
    .diffs
}

#[test]
fn comparator_finds_no_difference_between_ours_and_itself() {
    assert_eq!(compare_with_ours(|_| {}, |_| {}), Vec::<String>::new());
}

#[test]
fn comparator_reports_a_changed_field_number_with_its_path() {
    let diffs = compare_with_ours(
        |file| {
            let request = file
                .message_type
                .iter_mut()
                .find(|m| m.name() == "CreateVolumeRequest")
                .expect("CSI has CreateVolumeRequest");
            let name = request
                .field
                .iter_mut()
                .find(|f| f.name() == "name")
                .expect("CreateVolumeRequest has a name");
            name.number = Some(99);
        },
        |_| {},
    );
    assert_eq!(
        diffs,
        vec!["field csi.v1.CreateVolumeRequest.name: number: ours Some(99), upstream Some(1)"]
    );
}

#[test]
fn comparator_reports_a_dropped_secret_option_with_its_path() {
    let path = "field csi.v1.CreateVolumeRequest.secrets";
    let diffs = compare_with_ours(
        |_| {},
        |options| {
            options
                .remove(path)
                .expect("secrets carries (csi_secret) in our descriptor");
        },
    );
    assert_eq!(
        diffs,
        vec![
            format!("{path}: option (csi_secret) #1059: ours None, upstream Some([Varint(1)])"),
            format!("{path}: options present: ours false, upstream true"),
        ]
    );
}

#[test]
fn comparator_reports_a_nested_enum_value_and_a_streaming_flag() {
    let diffs = compare_with_ours(
        |file| {
            let capability = file
                .message_type
                .iter_mut()
                .find(|m| m.name() == "VolumeCapability")
                .expect("CSI has VolumeCapability");
            let access_mode = capability
                .nested_type
                .iter_mut()
                .find(|m| m.name() == "AccessMode")
                .expect("VolumeCapability has AccessMode");
            access_mode.enum_type[0].value.pop();
            let metadata = file
                .service
                .iter_mut()
                .find(|s| s.name() == "SnapshotMetadata")
                .expect("CSI has SnapshotMetadata");
            metadata.method[0].server_streaming = Some(false);
        },
        |_| {},
    );
    assert_eq!(
        diffs,
        vec![
            "enum value csi.v1.VolumeCapability.AccessMode.Mode.SINGLE_NODE_MULTI_WRITER: \
             missing from ours",
            "method csi.v1.SnapshotMetadata.GetMetadataAllocated: server_streaming: \
             ours Some(false), upstream Some(true)",
        ]
    );
}
