package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

type sample struct {
	Name   string   `json:"name"`
	Blocks []string `json:"blocks"`
	Empty  string   `json:"empty,omitempty"`
}

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]format{"": formatTable, "table": formatTable, "text": formatTable, "json": formatJSON, "yaml": formatYAML, "yml": formatYAML} {
		if got, err := parseFormat(in); err != nil || got != want {
			t.Errorf("parseFormat(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := parseFormat("xml"); err == nil || !strings.Contains(err.Error(), "want table, json or yaml") {
		t.Errorf("parseFormat(xml) = %v", err)
	}
}

func TestRenderSpellsFieldsAlikeInJSONAndYAML(t *testing.T) {
	v := sample{Name: "node-a", Blocks: []string{"10.0.0.0/26"}}
	table := func(tw *tabwriter.Writer) { fmt.Fprintf(tw, "NAME\tBLOCKS\n%s\t%s\n", v.Name, v.Blocks[0]) }
	outputs := map[format]string{}
	for _, f := range []format{formatTable, formatJSON, formatYAML} {
		var b bytes.Buffer
		if err := render(&b, f, v, table); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		outputs[f] = b.String()
	}
	if outputs[formatTable] != "NAME    BLOCKS\nnode-a  10.0.0.0/26\n" {
		t.Errorf("table = %q", outputs[formatTable])
	}
	if outputs[formatYAML] != "blocks:\n- 10.0.0.0/26\nname: node-a\n" {
		t.Errorf("yaml = %q", outputs[formatYAML])
	}
	var fromJSON, fromYAML sample
	if err := json.Unmarshal([]byte(outputs[formatJSON]), &fromJSON); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(outputs[formatYAML]), &fromYAML); err != nil {
		t.Fatal(err)
	}
	if fromJSON.Name != v.Name || fromYAML.Name != v.Name || fromYAML.Blocks[0] != v.Blocks[0] {
		t.Errorf("round trips: json %+v, yaml %+v", fromJSON, fromYAML)
	}
	if err := render(&bytes.Buffer{}, format("xml"), v, table); err == nil {
		t.Error("render accepted an unknown format")
	}
}
