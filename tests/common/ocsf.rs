//! A validator for OCSF events, written for flightrec's tests: it reads the
//! OCSF schema's own files (the raw class files with their `extends` chain,
//! objects/, profiles/, dictionary.json, categories.json) and checks an
//! event against them:
//!
//! - the class (by `class_uid`), its category and names, `type_uid =
//!   class_uid * 100 + activity_id`, `metadata.version`;
//! - every profile in `metadata.profiles` applies to the class;
//! - every attribute belongs to the class or object (its file or an
//!   ancestor's) or to a declared profile, recursively through objects;
//! - required attributes are present, of the class and of every declared
//!   profile, recursively; objects' `at_least_one`/`just_one` constraints;
//! - types (string, integer (32 bits), long, float, boolean, timestamp,
//!   objects, arrays; the regular expressions and ranges of string and
//!   integer subtypes), no nulls;
//! - enum values, and that a sibling's caption matches its id (except for
//!   99, Other, whose caption is the source's own);
//! - no deprecated attribute.
//!
//! Which attribute belongs to the class and which to a profile is decided
//! by where it is defined: directly in the class file or an ancestor's, or
//! only through a `$include` of a profile. (The compiled schema's
//! `profile` marks cannot tell: an attribute a class and a profile both
//! define is marked with the profile.)

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The schema directory the tests read: `../shared/compat/ocsf-schema-1.8.0`
/// beside the repository (CI's copy; a fresh clone alone does not have it).
pub fn schema_dir() -> PathBuf {
    super::root().join("../shared/compat/ocsf-schema-1.8.0")
}

/// One attribute as the class or object (with its profiles) defines it.
#[derive(Debug, Clone)]
pub struct Attr {
    /// `required`, `recommended`, `optional`.
    pub requirement: String,
    /// The profile the attribute comes from; `None` for the class's own.
    pub profile: Option<String>,
    /// A scalar type (`string_t`, …) or an object name (`object` is any).
    pub ty: String,
    pub is_array: bool,
    /// Enum values (id as text → caption); empty when not an enum.
    pub enumeration: BTreeMap<String, String>,
    pub sibling: Option<String>,
    pub deprecated: bool,
}

/// A class or object: its attributes and constraints.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub name: String,
    pub caption: String,
    pub attrs: BTreeMap<String, Attr>,
    pub constraints: Map<String, Value>,
    /// The profiles that may be declared for it (classes).
    pub profiles: BTreeSet<String>,
    /// The uid and category (classes).
    pub uid: Option<i64>,
    pub category: Option<String>,
}

pub struct Schema {
    pub version: String,
    dictionary: Map<String, Value>,
    types: Map<String, Value>,
    categories: Map<String, Value>,
    classes: HashMap<String, Value>,
    objects: HashMap<String, Value>,
    profiles: HashMap<String, Value>,
    regexes: std::cell::RefCell<HashMap<String, regex::Regex>>,
    objects_resolved: std::cell::RefCell<HashMap<String, Rc<Shape>>>,
    classes_by_uid: std::cell::RefCell<HashMap<i64, Option<Rc<Shape>>>>,
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

fn by_name(dir: &Path) -> HashMap<String, Value> {
    let mut files = Vec::new();
    json_files(dir, &mut files);
    files
        .into_iter()
        .map(|p| {
            let v = read_json(&p);
            let name = v["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no name", p.display()));
            (name.to_string(), v)
        })
        .collect()
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

impl Schema {
    pub fn load(dir: &Path) -> Schema {
        let dictionary = read_json(&dir.join("dictionary.json"));
        Schema {
            version: read_json(&dir.join("version.json"))["version"]
                .as_str()
                .unwrap()
                .to_string(),
            dictionary: obj(&dictionary["attributes"]),
            types: obj(&dictionary["types"]["attributes"]),
            categories: obj(&read_json(&dir.join("categories.json"))["attributes"]),
            classes: by_name(&dir.join("events")),
            objects: by_name(&dir.join("objects")),
            profiles: by_name(&dir.join("profiles")),
            regexes: Default::default(),
            objects_resolved: Default::default(),
            classes_by_uid: Default::default(),
        }
    }

    /// The class names the schema defines.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.keys().cloned().collect()
    }

    /// The core profiles (profiles/), not the extensions'.
    pub fn profile_names(&self) -> BTreeSet<String> {
        self.profiles.keys().cloned().collect()
    }

    /// Whether the core dictionary defines `attribute`.
    pub fn defines(&self, attribute: &str) -> bool {
        self.dictionary.contains_key(attribute)
    }

    pub fn object_names(&self) -> Vec<String> {
        self.objects.keys().cloned().collect()
    }

    /// `name` and its ancestors, leaf first.
    fn chain<'a>(&'a self, files: &'a HashMap<String, Value>, name: &str) -> Vec<&'a Value> {
        let mut out = Vec::new();
        let mut next = Some(name.to_string());
        while let Some(n) = next {
            let Some(f) = files.get(&n) else {
                panic!("`{n}` (in the extends chain of `{name}`) is not defined")
            };
            out.push(f);
            next = f["extends"].as_str().map(str::to_string);
            assert!(out.len() < 32, "extends cycle at {name}");
        }
        out
    }

    /// A class (`events/`) resolved through its `extends` chain.
    pub fn class(&self, name: &str) -> Shape {
        let mut shape = self.shape(&self.classes, name);
        // As the schema's compiler does: the class's own uid, its
        // category's and one type per activity are the values these may
        // take.
        // (base_event: uid 0 in the uncategorized category 0.)
        let category = shape.category.clone().unwrap_or_default();
        {
            let cu = self.category_uid(&category).unwrap_or(0);
            let class_uid = cu * 1000 + shape.uid.unwrap_or(0);
            let caption = shape.caption.clone();
            let cat_caption = self
                .categories
                .get(&category)
                .and_then(|c| c["caption"].as_str())
                .unwrap_or("Uncategorized")
                .to_string();
            let types: BTreeMap<String, String> = shape.attrs["activity_id"]
                .enumeration
                .iter()
                .map(|(id, c)| {
                    let id: i64 = id.parse().unwrap();
                    (
                        (class_uid * 100 + id).to_string(),
                        format!("{caption}: {c}"),
                    )
                })
                .collect();
            let set = |shape: &mut Shape, k: &str, e: BTreeMap<String, String>| {
                if let Some(a) = shape.attrs.get_mut(k) {
                    a.enumeration = e;
                }
            };
            set(
                &mut shape,
                "class_uid",
                [(class_uid.to_string(), caption)].into(),
            );
            set(
                &mut shape,
                "category_uid",
                [(cu.to_string(), cat_caption)].into(),
            );
            set(&mut shape, "type_uid", types);
        }
        shape
    }

    /// An object (`objects/`) resolved through its `extends` chain.
    pub fn object(&self, name: &str) -> Shape {
        self.shape(&self.objects, name)
    }

    /// The class whose `class_uid` (category uid × 1000 + class uid) is `uid`.
    pub fn class_by_uid(&self, uid: i64) -> Option<Rc<Shape>> {
        if let Some(c) = self.classes_by_uid.borrow().get(&uid) {
            return c.clone();
        }
        let found = self.classes.keys().map(|n| self.class(n)).find(|c| {
            c.uid.is_some_and(|u| {
                Some(uid)
                    == c.category
                        .as_deref()
                        .and_then(|cat| self.category_uid(cat))
                        .map(|cu| cu * 1000 + u)
            })
        });
        let found = found.map(Rc::new);
        self.classes_by_uid.borrow_mut().insert(uid, found.clone());
        found
    }

    fn object_rc(&self, name: &str) -> Rc<Shape> {
        if let Some(s) = self.objects_resolved.borrow().get(name) {
            return s.clone();
        }
        let s = Rc::new(self.object(name));
        self.objects_resolved
            .borrow_mut()
            .insert(name.to_string(), s.clone());
        s
    }

    pub fn category_uid(&self, category: &str) -> Option<i64> {
        self.categories
            .get(category)
            .and_then(|c| c["uid"].as_i64())
    }

    fn shape(&self, files: &HashMap<String, Value>, name: &str) -> Shape {
        let chain = self.chain(files, name);
        let mut shape = Shape {
            name: name.to_string(),
            caption: chain[0]["caption"].as_str().unwrap_or(name).to_string(),
            uid: chain[0]["uid"].as_i64(),
            category: chain
                .iter()
                .find_map(|f| f["category"].as_str().map(str::to_string)),
            ..Shape::default()
        };
        // The definitions of each attribute, root first: the class's own
        // (its file and its ancestors'), then the profiles' for the rest.
        let mut own: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut included: BTreeMap<String, (String, Value)> = BTreeMap::new();
        for f in chain.iter().rev() {
            if let Some(c) = f["constraints"].as_object() {
                shape.constraints = c.clone();
            }
            for p in f["profiles"].as_array().into_iter().flatten() {
                shape.profiles.insert(p.as_str().unwrap().to_string());
            }
            for (k, v) in obj(&f["attributes"]) {
                if k == "$include" {
                    for path in v.as_array().unwrap() {
                        let path = path.as_str().unwrap();
                        let profile = path
                            .strip_prefix("profiles/")
                            .and_then(|p| p.strip_suffix(".json"))
                            .unwrap_or_else(|| panic!("{name}: unexpected include {path}"));
                        let pf = &self.profiles[profile];
                        shape.profiles.insert(profile.to_string());
                        for (pk, pv) in obj(&pf["attributes"]) {
                            included.insert(pk, (profile.to_string(), pv));
                        }
                    }
                } else {
                    own.entry(k).or_default().push(v);
                }
            }
        }
        for (k, defs) in &own {
            let mut defs = defs.clone();
            if let Some((_, pv)) = included.get(k) {
                // Defined by the class and a profile: the class's, with the
                // profile's enum values and type merged in under it.
                defs.insert(0, pv.clone());
            }
            shape.attrs.insert(k.clone(), self.attr(k, &defs, None));
        }
        for (k, (profile, pv)) in &included {
            if !own.contains_key(k) {
                shape.attrs.insert(
                    k.clone(),
                    self.attr(k, std::slice::from_ref(pv), Some(profile.clone())),
                );
            }
        }
        // The datetime profile: an RFC 3339 twin `X_dt` of every timestamp.
        let timestamps: Vec<(String, Attr)> = shape
            .attrs
            .iter()
            .filter(|(_, a)| a.ty == "timestamp_t")
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        for (k, a) in timestamps {
            shape.attrs.insert(
                format!("{k}_dt"),
                Attr {
                    requirement: "optional".into(),
                    profile: Some("datetime".into()),
                    ty: "datetime_t".into(),
                    enumeration: BTreeMap::new(),
                    sibling: None,
                    ..a
                },
            );
        }
        shape
    }

    /// An attribute from the dictionary and its definitions (root first).
    fn attr(&self, name: &str, defs: &[Value], profile: Option<String>) -> Attr {
        let dict = self
            .dictionary
            .get(name)
            .unwrap_or_else(|| panic!("`{name}` is not in dictionary.json"));
        let mut a = Attr {
            requirement: "optional".into(),
            profile,
            ty: dict["type"].as_str().unwrap_or("object").to_string(),
            is_array: dict["is_array"].as_bool().unwrap_or(false),
            enumeration: BTreeMap::new(),
            sibling: dict["sibling"].as_str().map(str::to_string),
            deprecated: dict.get("@deprecated").is_some(),
        };
        for d in std::iter::once(dict).chain(defs) {
            if let Some(r) = d["requirement"].as_str() {
                a.requirement = r.to_string();
            }
            if let Some(t) = d["type"].as_str() {
                a.ty = t.to_string();
            }
            if let Some(b) = d["is_array"].as_bool() {
                a.is_array = b;
            }
            if let Some(s) = d["sibling"].as_str() {
                a.sibling = Some(s.to_string());
            }
            if d.get("@deprecated").is_some() {
                a.deprecated = true;
            }
            for (id, e) in obj(&d["enum"]) {
                let caption = e["caption"].as_str().unwrap_or_default().to_string();
                a.enumeration.insert(id, caption);
            }
        }
        a
    }

    /// A scalar type's chain of definitions, the type itself first.
    fn type_chain(&self, ty: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let mut next = Some(ty.to_string());
        while let Some(t) = next {
            let def = self.types.get(&t).cloned().unwrap_or(Value::Null);
            next = def["type"].as_str().map(str::to_string);
            out.push((t, def));
        }
        out
    }

    fn is_scalar(&self, ty: &str) -> bool {
        self.types.contains_key(ty)
    }

    fn matches(&self, pattern: &str, text: &str) -> bool {
        let mut cache = self.regexes.borrow_mut();
        let re = cache.entry(pattern.to_string()).or_insert_with(|| {
            regex::Regex::new(pattern).unwrap_or_else(|e| panic!("schema regex {pattern}: {e}"))
        });
        re.is_match(text)
    }

    /// Every problem with `event` (empty when it is valid).
    pub fn validate(&self, event: &Value) -> Vec<String> {
        let mut p = Vec::new();
        let Some(e) = event.as_object() else {
            return vec!["the event is not a JSON object".into()];
        };
        let Some(class_uid) = e.get("class_uid").and_then(Value::as_i64) else {
            return vec!["class_uid: missing or not an integer".into()];
        };
        let Some(class) = self.class_by_uid(class_uid) else {
            return vec![format!(
                "class_uid: {class_uid} is no class of OCSF {}",
                self.version
            )];
        };
        // The declared profiles.
        let mut declared = BTreeSet::new();
        match event.pointer("/metadata/profiles") {
            None => {}
            Some(Value::Array(list)) => {
                for v in list {
                    match v.as_str() {
                        Some(n) if class.profiles.contains(n) => {
                            declared.insert(n.to_string());
                        }
                        Some(n) if self.profiles.contains_key(n) => p.push(format!(
                            "metadata.profiles: `{n}` does not apply to class {}",
                            class.name
                        )),
                        _ => p.push(format!("metadata.profiles: unknown profile {v}")),
                    }
                }
            }
            Some(v) => p.push(format!("metadata.profiles: not an array: {v}")),
        }
        self.check_object(&class, e, "", &declared, &mut p);

        // Classification.
        let category = class.category.clone().unwrap_or_default();
        let category_uid = self.category_uid(&category);
        if e.get("category_uid").and_then(Value::as_i64) != category_uid {
            p.push(format!(
                "category_uid: {} is not {category_uid:?} ({category})",
                e.get("category_uid").unwrap_or(&Value::Null)
            ));
        }
        if let Some(n) = e.get("class_name")
            && n.as_str() != Some(class.caption.as_str())
        {
            p.push(format!("class_name: {n} is not \"{}\"", class.caption));
        }
        let category_caption = self.categories[&category]["caption"].as_str().unwrap_or("");
        if let Some(n) = e.get("category_name")
            && n.as_str() != Some(category_caption)
        {
            p.push(format!("category_name: {n} is not \"{category_caption}\""));
        }
        let activity = e.get("activity_id").and_then(Value::as_i64);
        match (e.get("type_uid").and_then(Value::as_i64), activity) {
            (Some(t), Some(a)) if t == class_uid * 100 + a => {}
            (t, a) => p.push(format!(
                "type_uid: {t:?} is not class_uid * 100 + activity_id ({class_uid} * 100 + {a:?})"
            )),
        }
        if let (Some(name), Some(a)) = (e.get("type_name"), activity) {
            let caption = class.attrs["activity_id"]
                .enumeration
                .get(&a.to_string())
                .cloned()
                .unwrap_or_default();
            let want = format!("{}: {caption}", class.caption);
            if name.as_str() != Some(want.as_str()) {
                p.push(format!("type_name: {name} is not \"{want}\""));
            }
        }
        match event.pointer("/metadata/version").and_then(Value::as_str) {
            Some(v) if v == self.version => {}
            v => p.push(format!(
                "metadata.version: {v:?} is not the schema's {}",
                self.version
            )),
        }
        p
    }

    fn check_object(
        &self,
        shape: &Shape,
        value: &Map<String, Value>,
        path: &str,
        declared: &BTreeSet<String>,
        p: &mut Vec<String>,
    ) {
        let at = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        for (k, v) in value {
            let Some(a) = shape.attrs.get(k) else {
                p.push(format!("{}: not an attribute of {}", at(k), shape.name));
                continue;
            };
            if let Some(profile) = &a.profile
                && !declared.contains(profile)
            {
                p.push(format!(
                    "{}: belongs to the `{profile}` profile, which metadata.profiles does not declare",
                    at(k)
                ));
            }
            if a.deprecated {
                p.push(format!("{}: deprecated", at(k)));
            }
            if a.is_array {
                match v {
                    Value::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            self.check_value(a, item, &format!("{}[{i}]", at(k)), declared, p);
                        }
                    }
                    _ => p.push(format!("{}: not an array: {v}", at(k))),
                }
            } else {
                self.check_value(a, v, &at(k), declared, p);
            }
            // A sibling names its id's caption (99, Other, names its own).
            if let Some(sib) = &a.sibling
                && !a.enumeration.is_empty()
                && let Some(name) = value.get(sib)
            {
                let id = v.to_string();
                if id != "99"
                    && let Some(caption) = a.enumeration.get(&id)
                    && name.as_str() != Some(caption.as_str())
                {
                    p.push(format!(
                        "{}: {name} is not the caption of {} {id} (\"{caption}\")",
                        at(sib),
                        k
                    ));
                }
            }
        }
        for (k, a) in &shape.attrs {
            let applies = a.profile.as_ref().is_none_or(|pr| declared.contains(pr));
            if applies && a.requirement == "required" && !value.contains_key(k) {
                let whose = match &a.profile {
                    Some(pr) => format!("the `{pr}` profile"),
                    None => shape.name.clone(),
                };
                p.push(format!("{}: required by {whose}, missing", at(k)));
            }
        }
        let present = |list: &Value| -> (Vec<String>, usize) {
            let names: Vec<String> = list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            let n = names.iter().filter(|n| value.contains_key(*n)).count();
            (names, n)
        };
        if let Some(list) = shape.constraints.get("at_least_one") {
            let (names, n) = present(list);
            if n == 0 {
                p.push(format!(
                    "{}: {} needs at least one of {names:?}",
                    if path.is_empty() { "(event)" } else { path },
                    shape.name
                ));
            }
        }
        if let Some(list) = shape.constraints.get("just_one") {
            let (names, n) = present(list);
            if n != 1 {
                p.push(format!(
                    "{}: {} needs exactly one of {names:?}, has {n}",
                    if path.is_empty() { "(event)" } else { path },
                    shape.name
                ));
            }
        }
    }

    fn check_value(
        &self,
        a: &Attr,
        v: &Value,
        path: &str,
        declared: &BTreeSet<String>,
        p: &mut Vec<String>,
    ) {
        if v.is_null() {
            p.push(format!("{path}: null (an unknown value is omitted)"));
            return;
        }
        if !self.is_scalar(&a.ty) {
            let Some(m) = v.as_object() else {
                p.push(format!("{path}: not an object ({}): {v}", a.ty));
                return;
            };
            if a.ty != "object" {
                let shape = self.object_rc(&a.ty);
                self.check_object(&shape, m, path, declared, p);
            }
            return;
        }
        let chain = self.type_chain(&a.ty);
        let base = chain.last().map(|(t, _)| t.as_str()).unwrap_or("");
        let ok = match base {
            "string_t" => v.is_string(),
            "integer_t" => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            "long_t" => v.is_i64(),
            "float_t" => v.is_number(),
            "boolean_t" => v.is_boolean(),
            "json_t" => true,
            other => {
                p.push(format!("{path}: unknown base type {other} of {}", a.ty));
                return;
            }
        };
        if !ok {
            p.push(format!("{path}: {v} is not a {} ({base})", a.ty));
            return;
        }
        for (t, def) in &chain {
            if let (Some(re), Some(s)) = (def["regex"].as_str(), v.as_str())
                && !self.matches(re, s)
            {
                p.push(format!("{path}: {v} does not match the pattern of {t}"));
            }
            if let (Some(max), Some(s)) = (def["max_len"].as_u64(), v.as_str())
                && s.len() as u64 > max
            {
                p.push(format!("{path}: longer than {max} ({t})"));
            }
            if let (Some(range), Some(n)) = (def["range"].as_array(), v.as_i64())
                && (range.len() != 2
                    || n < range[0].as_i64().unwrap_or(i64::MIN)
                    || n > range[1].as_i64().unwrap_or(i64::MAX))
            {
                p.push(format!("{path}: {n} is outside {t}'s range {range:?}"));
            }
        }
        if !a.enumeration.is_empty() {
            let key = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if !a.enumeration.contains_key(&key) {
                p.push(format!(
                    "{path}: {v} is not one of {:?}",
                    a.enumeration.keys().collect::<Vec<_>>()
                ));
            }
        }
    }
}
