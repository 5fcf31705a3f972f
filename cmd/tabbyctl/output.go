package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// format is how a command prints its answer: a table for people, JSON or YAML for scripts.
type format string

const (
	formatTable format = "table"
	formatJSON  format = "json"
	formatYAML  format = "yaml"
)

// formatHelp is the -o flag's usage, the one place that lists the formats.
const formatHelp = "output format: table (for people; \"text\" is the same), json or yaml (for scripts)"

// parseFormat reads the -o flag; "text" is the old name of table and still works.
func parseFormat(s string) (format, error) {
	switch s {
	case "", "table", "text":
		return formatTable, nil
	case "json":
		return formatJSON, nil
	case "yaml", "yml":
		return formatYAML, nil
	}
	return "", fmt.Errorf("unknown output format %q (want table, json or yaml)", s)
}

// render writes v as JSON or YAML, or calls table with a tab writer and flushes it. YAML
// goes through the JSON encoding, so both spell fields the same (the json tags).
func render(w io.Writer, f format, v any, table func(tw *tabwriter.Writer)) error {
	switch f {
	case formatJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return fmt.Errorf("encode json: %w", err)
		}
		return nil
	case formatYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode yaml: %w", err)
		}
		_, err = w.Write(b)
		return err
	case formatTable, "":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	return fmt.Errorf("unknown output format %q (want table, json or yaml)", f)
}
