// Command kstatus is a test-harness helper of the Palisade e2e suite. It asks the real
// libraries GitOps tools use what they make of Palisade objects:
//
//	kstatus < object.json         kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute),
//	                              as used by Flux and kpt, of one object, a JSON array of
//	                              objects, or a `kind: List`. Prints {"status", "message"} per
//	                              object (an array for an array or List input).
//	kstatus lua SCRIPT < obj.json Runs an Argo CD resource health script with gopher-lua (the
//	                              Lua that Argo CD embeds) with `obj` set to the object, and
//	                              prints the table it returns: {"status", "message"}.
//
// Not part of the operator: Go is used here only because these libraries are Go.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(args []string, in io.Reader, out io.Writer) error {
	input, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	// Integers stay int64, as the apimachinery accessors that kstatus uses expect.
	var doc any
	if err := utiljson.Unmarshal(input, &doc); err != nil {
		return fmt.Errorf("stdin is not JSON: %w", err)
	}
	objects, many := split(doc)
	eval := compute
	switch {
	case len(args) == 0:
	case len(args) == 2 && args[0] == "lua":
		script, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		eval = func(obj map[string]any) (result, error) { return health(string(script), obj) }
	default:
		return fmt.Errorf("usage: kstatus [lua SCRIPT] < objects.json")
	}
	results := make([]result, 0, len(objects))
	for i, obj := range objects {
		r, err := eval(obj)
		if err != nil {
			return fmt.Errorf("object %d: %w", i, err)
		}
		results = append(results, r)
	}
	enc := json.NewEncoder(out)
	if many {
		return enc.Encode(results)
	}
	return enc.Encode(results[0])
}

// split returns the objects of a single object, an array, or a List, and whether the input
// held several.
func split(doc any) ([]map[string]any, bool) {
	switch d := doc.(type) {
	case []any:
		return objs(d), true
	case map[string]any:
		kind, _ := d["kind"].(string)
		if items, ok := d["items"].([]any); ok && strings.HasSuffix(kind, "List") {
			return objs(items), true
		}
		return []map[string]any{d}, false
	}
	return nil, true
}

func objs(items []any) []map[string]any {
	out := make([]map[string]any, 0, len(items))
	for _, it := range items {
		if m, ok := it.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

func compute(obj map[string]any) (result, error) {
	r, err := status.Compute(&unstructured.Unstructured{Object: obj})
	if err != nil {
		return result{}, err
	}
	return result{Status: string(r.Status), Message: r.Message}, nil
}

// health runs an Argo CD health script: the object is the global `obj`, the script returns a
// table with `status` and `message`.
func health(script string, obj map[string]any) (result, error) {
	// Only the libraries Argo CD opens for health scripts by default (no os, io or string
	// library), so a script that passes here does not lean on anything Argo CD withholds.
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return result{}, err
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return result{}, fmt.Errorf("the script returned %s, not a table", L.Get(-1).Type())
	}
	r := result{}
	if s, ok := ret.RawGetString("status").(lua.LString); ok {
		r.Status = string(s)
	}
	if m, ok := ret.RawGetString("message").(lua.LString); ok {
		r.Message = string(m)
	}
	switch r.Status {
	case "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown":
		return r, nil
	}
	// Argo CD shows an invalid status as Unknown; a test should hear about it.
	return r, fmt.Errorf("the script returned the invalid health status %q", r.Status)
}

// toLua converts decoded JSON to Lua values the way Argo CD exposes objects: maps and arrays
// become tables (arrays 1-based), numbers are numbers, null is nil.
func toLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case int64:
		return lua.LNumber(x)
	case float64:
		return lua.LNumber(x)
	case string:
		return lua.LString(x)
	case []any:
		t := L.NewTable()
		for _, e := range x {
			t.Append(toLua(L, e))
		}
		return t
	case map[string]any:
		t := L.NewTable()
		for k, e := range x {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	}
	return lua.LString(fmt.Sprint(v))
}
