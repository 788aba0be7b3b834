package config

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/caplance/caplance/internal/quote"
)

// problem is one thing wrong with a configuration: what, and where.
type problem struct {
	// key is the key in the file it concerns, item(i) standing for the
	// i-th table of an array of tables; nil: the file as a whole.
	key []string
	// env is the environment variable it concerns, "" for the file.
	env string
	msg string
}

// problems collects every problem of a configuration.
type problems []problem

// add records a problem of the file as a whole.
func (p *problems) add(format string, args ...any) {
	*p = append(*p, problem{msg: fmt.Sprintf(format, args...)})
}

// at records a problem of the value of key.
func (p *problems) at(key []string, format string, args ...any) {
	*p = append(*p, problem{key: key, msg: fmt.Sprintf(format, args...)})
}

// item stands for the i-th (0-based) table of an array of tables in a key.
// A NUL byte cannot start a key of a valid document.
func item(i int) string { return "\x00" + strconv.Itoa(i) }

// lookup is the map key of a key path.
func lookup(key []string) string { return toml.Key(key).String() }

// display is a key path as an operator writes it: "backend.weight".
func display(key []string) string {
	var parts []string
	for _, k := range key {
		if !strings.HasPrefix(k, "\x00") {
			parts = append(parts, k)
		}
	}
	return toml.Key(parts).String()
}

// decoded is what decoding a document learnt beside its values.
type decoded struct {
	// lines maps a key path (lookup) to the line that sets it.
	lines map[string]int
	// failed holds the key paths whose value could not be decoded, so
	// that validation does not report them again as missing.
	failed   map[string]bool
	problems problems
}

// decodeLenient decodes the TOML document data into v, a pointer to a
// struct whose fields have `toml` tags: every key it can, and one problem
// for each unknown key and each value of the wrong type. Only a syntax
// error stops it; that is returned as err.
func decodeLenient(data []byte, v any) (*decoded, error) {
	var tree map[string]any
	if _, err := toml.Decode(string(data), &tree); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("line %d, column %d: %s", pe.Position.Line, pe.Position.Col, pe.Message)
		}
		return nil, err
	}
	d := &decoded{lines: keyLines(string(data)), failed: map[string]bool{}}
	d.table(tree, reflect.ValueOf(v).Elem(), nil)
	return d, nil
}

// line is the line of key, else of the nearest table above it that has
// one; 0 when not known.
func (d *decoded) line(key []string) int {
	for n := len(key); n > 0; n-- {
		if l, ok := d.lines[lookup(key[:n])]; ok {
			return l
		}
	}
	return 0
}

// isFailed reports whether key, or a table above it, could not be decoded.
func (d *decoded) isFailed(key []string) bool {
	for n := len(key); n > 0; n-- {
		if d.failed[lookup(key[:n])] {
			return true
		}
	}
	return false
}

func (d *decoded) wrongType(key []string, want string, got any) {
	d.failed[lookup(key)] = true
	d.problems.at(key, "%s: %v", display(key), mustBe(want, got))
}

// table decodes the keys of a TOML table into the struct rv.
func (d *decoded) table(m map[string]any, rv reflect.Value, key []string) {
	fields := map[string]int{}
	for i := range rv.NumField() {
		if tag := rv.Type().Field(i).Tag.Get("toml"); tag != "" {
			fields[tag] = i
		}
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		sub := append(slices.Clip(key), k)
		i, ok := fields[k]
		if !ok {
			d.problems.at(sub, "unknown key %s", quote.Q(display(sub)))
			continue
		}
		d.value(m[k], rv.Field(i), sub)
	}
}

// value decodes v into rv and reports whether it could.
func (d *decoded) value(v any, rv reflect.Value, key []string) bool {
	switch rv.Kind() {
	case reflect.Pointer:
		p := reflect.New(rv.Type().Elem())
		if !d.value(v, p.Elem(), key) {
			return false
		}
		rv.Set(p)
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			d.wrongType(key, "a table", v)
			return false
		}
		d.table(m, rv, key)
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			d.wrongType(key, "a table", v)
			return false
		}
		out := reflect.MakeMapWithSize(rv.Type(), len(m))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			e := reflect.New(rv.Type().Elem()).Elem()
			if d.value(m[k], e, append(slices.Clip(key), k)) {
				out.SetMapIndex(reflect.ValueOf(k), e)
			}
		}
		rv.Set(out)
	case reflect.Slice:
		return d.slice(v, rv, key)
	default:
		if err := setScalar(v, rv); err != nil {
			d.failed[lookup(key)] = true
			d.problems.at(key, "%s: %v", display(key), err)
			return false
		}
	}
	return true
}

// slice decodes an array, or an array of tables, into rv.
func (d *decoded) slice(v any, rv reflect.Value, key []string) bool {
	var items []any
	switch a := v.(type) {
	case []any:
		items = a
	case []map[string]any: // [[table]]
		for _, m := range a {
			items = append(items, m)
		}
	default:
		d.wrongType(key, "an array", v)
		return false
	}
	elem := rv.Type().Elem()
	out := reflect.MakeSlice(rv.Type(), 0, len(items))
	ok := true
	for i, it := range items {
		e := reflect.New(elem).Elem()
		if elem.Kind() == reflect.Struct {
			m, isTable := it.(map[string]any)
			if !isTable {
				d.wrongType(key, "an array of tables", v)
				return false
			}
			d.table(m, e, append(slices.Clip(key), item(i)))
		} else if !d.element(it, e, key, i) {
			ok = false
			continue
		}
		out = reflect.Append(out, e)
	}
	if !ok {
		d.failed[lookup(key)] = true
	}
	rv.Set(out)
	return ok
}

// element decodes the i-th element of the array at key; its problem names
// the element, on the array's line.
func (d *decoded) element(v any, rv reflect.Value, key []string, i int) bool {
	if err := setScalar(v, rv); err != nil {
		d.problems.at(key, "%s: element %d: %v", display(key), i+1, err)
		return false
	}
	return true
}

// setScalar sets rv, a string, integer, float or boolean, from the TOML
// value v; the error says what is wrong with v.
func setScalar(v any, rv reflect.Value) error {
	switch rv.Kind() {
	case reflect.String:
		s, ok := v.(string)
		if !ok {
			return mustBe("a string", v)
		}
		rv.SetString(s)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := v.(int64)
		if !ok {
			return mustBe("an integer", v)
		}
		if rv.OverflowInt(n) {
			return fmt.Errorf("%d is out of range", n)
		}
		rv.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := v.(int64)
		if !ok {
			return mustBe("an integer", v)
		}
		if n < 0 || rv.OverflowUint(uint64(n)) {
			return fmt.Errorf("%d is out of range", n)
		}
		rv.SetUint(uint64(n))
	case reflect.Float32, reflect.Float64:
		switch f := v.(type) {
		case float64:
			rv.SetFloat(f)
		case int64:
			rv.SetFloat(float64(f))
		default:
			return mustBe("a number", v)
		}
	case reflect.Bool:
		b, ok := v.(bool)
		if !ok {
			return mustBe("true or false", v)
		}
		rv.SetBool(b)
	case reflect.Interface:
		// An any field takes every value; its validation checks the type,
		// for a key whose values may be of several types (a service's
		// ports: integers and "first-last" strings).
		rv.Set(reflect.ValueOf(v))
	default:
		// A raw struct with a field this decoder does not know: a bug.
		panic(fmt.Sprintf("config: no decoding of TOML into %s", rv.Type()))
	}
	return nil
}

func mustBe(want string, got any) error {
	return fmt.Errorf("must be %s, not %s", want, tomlType(got))
}

// tomlType names the TOML type of a decoded value.
func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("a %T", v)
}

// keyLines maps each key path (lookup) to the line that sets it, the i-th
// [[table]] of an array being item(i) below it. A header's name is resolved
// as TOML does: a part naming an array of tables stands for its last table
// so far, so the backends of the second [[service]] are below
// service, item(1). The toml package keeps key positions private (and has
// one per name for arrays of tables), so this finds them again with a
// line-oriented scan of table headers and key = value lines; it only
// decorates messages, so a miss costs a line number, nothing else.
func keyLines(doc string) map[string]int {
	lines := map[string]int{}
	tables := map[string]int{} // how many [[…]] so far, by resolved path
	var table []string
	set := func(key []string, n int) {
		if _, ok := lines[lookup(key)]; !ok {
			lines[lookup(key)] = n
		}
	}
	resolve := func(name []string) []string {
		var path []string
		for _, part := range name {
			path = append(path, part)
			if n, ok := tables[lookup(path)]; ok {
				path = append(path, item(n-1))
			}
		}
		return path
	}
	for i, line := range strings.Split(doc, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "[["):
			name := splitKey(strings.SplitN(line[2:], "]]", 2)[0])
			array := append(resolve(name[:len(name)-1]), name[len(name)-1])
			idx := tables[lookup(array)]
			tables[lookup(array)]++
			set(array, i+1)
			table = append(slices.Clip(array), item(idx))
			set(table, i+1)
		case strings.HasPrefix(line, "["):
			table = resolve(splitKey(strings.SplitN(line[1:], "]", 2)[0]))
			set(table, i+1)
		case strings.HasPrefix(line, "#"):
		default:
			k, _, ok := cutUnquoted(line, '=')
			if !ok {
				continue
			}
			key := append(slices.Clip(table), splitKey(k)...)
			for n := len(table) + 1; n <= len(key); n++ {
				set(key[:n], i+1)
			}
		}
	}
	return lines
}

// splitKey turns `a . "b.c"` into its parts: a, b.c.
func splitKey(s string) []string {
	var parts []string
	for {
		part, rest, more := cutUnquoted(s, '.')
		part = strings.TrimSpace(part)
		if len(part) >= 2 && (part[0] == '"' || part[0] == '\'') && part[len(part)-1] == part[0] {
			part = part[1 : len(part)-1]
		}
		parts = append(parts, part)
		if !more {
			return parts
		}
		s = rest
	}
}

// cutUnquoted is strings.Cut at the first sep outside quotes.
func cutUnquoted(s string, sep byte) (before, after string, found bool) {
	quote := byte(0)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quote == '"' && c == '\\':
			i++ // an escaped character, perhaps a quote
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
		case c == '"' || c == '\'':
			quote = c
		case c == sep:
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
