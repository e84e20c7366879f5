#!/usr/bin/env bash
# Regenerates the committed seed corpora (fuzz/seeds/<target>/) and the dictionaries (fuzz/dict/)
# from the repository's own inputs:
#   compile:     examples/*.yaml; every document of the bad-input table in
#                controller/tests/bad_input.rs (with the table's good sandbox appended where the
#                test appends it); and the policy fields of each mxc_import seed as an AgentPolicy
#                spec, with that good sandbox;
#   mxc_import:  tests/mxc-corpus/*.json, examples/mxc/*.json, and the json!({...}) documents
#                of controller/tests/mxc_corpus.rs that are plain JSON.
#   dict/compile.dict: field names of the CRDs (crds/palisade.dev_crds.yaml) and enum values;
#   dict/mxc_import.dict: keys and short values of the MXC seeds, names in controller/src/mxc.rs.
# Run it after changing any of those (Python 3, standard library only), and commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import json
import pathlib
import re
import shutil

root = pathlib.Path(".")
seeds = root / "fuzz" / "seeds"
for t in ("compile", "mxc_import"):
    shutil.rmtree(seeds / t, ignore_errors=True)
    (seeds / t).mkdir(parents=True)


def slug(s):
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")[:60]


def write(target, name, text):
    (seeds / target / name).write_text(text)


# ---- compile: the examples -------------------------------------------------------------------
count = {"compile": 0, "mxc_import": 0}
for p in sorted((root / "examples").glob("*.yaml")):
    write("compile", f"example-{p.stem}.yaml", p.read_text())
    count["compile"] += 1

# ---- compile: the bad-input table -------------------------------------------------------------
# A small reader for the Rust expressions the table uses: string literals, `.to_string()` /
# `.into()`, calls of the file's one-argument helpers, and format!.
src = (root / "controller" / "tests" / "bad_input.rs").read_text()


class Reader:
    def __init__(self, text, pos=0):
        self.t, self.i = text, pos

    def ws(self):
        while self.i < len(self.t) and self.t[self.i] in " \t\r\n":
            self.i += 1

    def eat(self, s):
        self.ws()
        if self.t.startswith(s, self.i):
            self.i += len(s)
            return True
        return False

    def expect(self, s):
        if not self.eat(s):
            raise ValueError(f"expected {s!r} at {self.t[self.i:self.i + 40]!r}")

    def ident(self):
        self.ws()
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*!?").match(self.t, self.i)
        if not m:
            raise ValueError(f"expected a name at {self.t[self.i:self.i + 40]!r}")
        self.i = m.end()
        return m.group()

    def string(self):
        self.ws()
        if self.t[self.i] != '"':
            raise ValueError(f"expected a string at {self.t[self.i:self.i + 40]!r}")
        self.i += 1
        out = []
        esc = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}
        while self.t[self.i] != '"':
            c = self.t[self.i]
            if c == "\\":
                n = self.t[self.i + 1]
                if n == "\n":  # line continuation
                    self.i += 2
                    self.ws()
                    continue
                if n not in esc:
                    raise ValueError(f"unsupported escape \\{n}")
                out.append(esc[n])
                self.i += 2
            else:
                out.append(c)
                self.i += 1
        self.i += 1
        return "".join(out)


consts = {
    m.group(1): Reader(src, m.end()).string()
    for m in re.finditer(r"const ([A-Z_]+): &str =", src)
}
helpers = {
    m.group(1): (m.group(2), m.end())
    for m in re.finditer(r"\nfn ([a-z_]+)\(([a-z_]+): &str\) -> String \{", src)
}


def fmt(template, args, env):
    out, pos, i = [], 0, 0
    while i < len(template):
        c = template[i]
        if template.startswith("{{", i) or template.startswith("}}", i):
            out.append(c)
            i += 2
        elif c == "{":
            j = template.index("}", i)
            name = template[i + 1:j]
            if name == "":
                out.append(args[pos])
                pos += 1
            else:
                out.append(env[name] if name in env else consts[name])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expr(r, env):
    r.ws()
    if r.t[r.i] == '"':
        s = r.string()
        r.eat(".to_string()") or r.eat(".into()")
        return s
    name = r.ident()
    if name == "format!":
        r.expect("(")
        template = r.string()
        args = []
        while r.eat(","):
            if r.eat(")"):
                break
            args.append(expr(r, env))
        else:
            r.expect(")")
        r.eat(".to_string()") or r.eat(".into()")
        return fmt(template, args, env)
    if name in helpers:
        r.expect("(")
        arg = expr(r, env)
        r.expect(")")
        param, body = helpers[name]
        return expr(Reader(src, body), {param: arg})
    if name in env:
        return env[name]
    raise ValueError(f"cannot read `{name}`")


table = src.index("fn table()")
table_end = src.index("\n}\n", table)
good_sandbox = consts["GOOD_SANDBOX"]
done = skipped = 0
for m in re.finditer(r"\n\s*\(\"", src[table:table_end]):
    r = Reader(src, table + m.start())
    try:
        r.expect("(")
        name = r.string()
        r.expect(",")
        doc = expr(r, {})
        r.expect(",")
        r.expect("vec!")
    except (ValueError, KeyError, IndexError) as e:
        print(f"seed.sh: bad_input.rs row at offset {m.start()}: skipped ({e})")
        skipped += 1
        continue
    if "kind: AgentSandbox" not in doc:
        doc += good_sandbox
    done += 1
    write("compile", f"bad-input-{done:02d}-{slug(name)}.yaml", doc)
count["compile"] += done
print(f"seed.sh: {done} documents from the bad-input table ({skipped} skipped)")

# ---- mxc_import: the MXC corpus, the example, the corpus test's inline documents --------------
# The corpus is MIT-licensed (Microsoft): its licence goes with the copies.
shutil.copy(root / "tests" / "mxc-corpus" / "LICENSE.md", seeds / "mxc_import" / "mxc-corpus-LICENSE.md")
for d in (root / "tests" / "mxc-corpus", root / "examples" / "mxc"):
    for p in sorted(d.glob("*.json")):
        write("mxc_import", f"{d.name}-{p.name}", p.read_text())
        count["mxc_import"] += 1

corpus_src = (root / "controller" / "tests" / "mxc_corpus.rs").read_text()
inline = set()
for m in re.finditer(r"json!\(\{", corpus_src):
    i, depth, in_str = m.end() - 1, 0, False
    for j in range(i, len(corpus_src)):
        c = corpus_src[j]
        if in_str:
            if c == "\\":
                continue
            if c == '"' and corpus_src[j - 1] != "\\":
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                break
    try:
        doc = json.loads(corpus_src[i:j + 1])
    except json.JSONDecodeError:
        continue  # Rust expressions inside: not plain JSON
    if isinstance(doc, dict) and ("version" in doc or "network" in doc or "filesystem" in doc):
        inline.add(json.dumps(doc, indent=2, sort_keys=True))
for n, text in enumerate(sorted(inline), 1):
    write("mxc_import", f"mxc-corpus-test-inline-{n:02d}.json", text + "\n")
count["mxc_import"] += len(inline)

# ---- compile: the MXC documents' policy fields as AgentPolicy specs ----------------------------
# AgentPolicy's spec takes MXC's policy fields as they are: each MXC seed becomes a policy (in
# JSON flow style, which YAML reads) with the bad-input table's good sandbox. Many are valid, so
# the fuzzer starts from plans that compile.
policy_keys = ("version", "filesystem", "network", "runtimeConfig", "ui", "timeoutMs")
specs = set()
for p in sorted((seeds / "mxc_import").glob("*.json")):
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError:
        continue
    if isinstance(doc, dict):
        spec = {k: doc[k] for k in policy_keys if k in doc}
        if "timeout" in doc.get("process", {}):
            spec.setdefault("timeoutMs", doc["process"]["timeout"])
        specs.add(json.dumps(spec, sort_keys=True))
for n, spec in enumerate(sorted(specs), 1):
    text = consts["POLICY_HEAD"].replace("spec:\n", "spec: " + spec + "\n") + good_sandbox
    write("compile", f"mxc-as-policy-{n:02d}.yaml", text)
count["compile"] += len(specs)

# ---- the compile dictionary: CRD field names and enum values ----------------------------------
crd = (root / "crds" / "palisade.dev_crds.yaml").read_text()
schema_words = {
    "type", "properties", "description", "items", "required", "enum", "format", "nullable",
    "default", "additionalProperties", "anyOf", "oneOf", "allOf", "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations", "minimum", "maximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "rule", "message", "title",
    "openAPIV3Schema", "schema", "served", "storage", "subresources", "status", "names",
    "versions", "scope", "group", "kind", "listKind", "plural", "singular", "shortNames",
    "categories", "additionalPrinterColumns", "jsonPath", "name", "priority", "metadata",
    "spec", "apiVersion", "annotations", "labels", "apiextensions", "conversion", "strategy",
}
keys, values = set(), set()
lines = crd.splitlines()
for k, line in enumerate(lines):
    m = re.match(r"^\s*([A-Za-z][A-Za-z0-9]*):\s*$", line)
    if m and m.group(1) not in schema_words:
        keys.add(m.group(1))
    if re.match(r"^\s*enum:\s*$", line):
        for nxt in lines[k + 1:]:
            v = re.match(r"^\s*- (.+)$", nxt)
            if not v:
                break
            values.add(v.group(1).strip().strip("'\""))
words = sorted(keys) + sorted(values - keys)
fixed = [
    "apiVersion", "palisade.dev/v1alpha1", "kind", "AgentPolicy", "AgentSandbox", "List",
    "metadata", "name", "namespace", "spec", "policyRef", "---", "- ", ": ", "{}", "[]",
    "null", "true", "false", "0.0.0.0/0", "::/0", "10.0.0.0/8", "169.254.169.254/32",
    "fd00::/8", "http://127.0.0.1:3128", "*.example.com", "/tmp", "/workspace",
]
with open(root / "fuzz" / "dict" / "compile.dict", "w") as f:
    f.write("# Generated by fuzz/seed.sh from crds/palisade.dev_crds.yaml: field names, enum values\n")
    f.write("# and a few fixed tokens of Palisade documents.\n")
    for w in dict.fromkeys(fixed + words):
        f.write(json.dumps(w) + "\n")
# ---- the mxc_import dictionary: keys and short values of the MXC seeds, names in mxc.rs --------
mxc_words = set()


def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            mxc_words.add(k)
            walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
    elif isinstance(v, str) and len(v) <= 24:
        mxc_words.add(v)


for p in sorted((seeds / "mxc_import").glob("*.json")):
    try:
        walk(json.loads(p.read_text()))
    except json.JSONDecodeError:
        pass
mxc_src = (root / "controller" / "src" / "mxc.rs").read_text()
mxc_words.update(re.findall(r'"([A-Za-z$_][A-Za-z0-9_]{1,30})"', mxc_src))
with open(root / "fuzz" / "dict" / "mxc_import.dict", "w") as f:
    f.write("# Generated by fuzz/seed.sh: keys and short values of the MXC seeds, names in mxc.rs.\n")
    for w in sorted(mxc_words):
        f.write(json.dumps(w) + "\n")
print(f"seed.sh: {len(mxc_words)} mxc_import dictionary entries")
print(f"seed.sh: {count['compile']} compile seeds, {count['mxc_import']} mxc_import seeds, "
      f"{len(dict.fromkeys(fixed + words))} dictionary entries")
PY
