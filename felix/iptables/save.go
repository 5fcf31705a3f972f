package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// kernelTable is one table as iptables-save printed it.
type kernelTable struct {
	chains map[string]*kernelChain
	// order is the chains in the order iptables-save listed them.
	order []string
}

// kernelChain is one chain of a kernelTable.
type kernelChain struct {
	// builtin is set for INPUT, FORWARD, ...: chains with a policy.
	builtin bool
	rules   []kernelRule
}

// kernelRule is one rule line.
type kernelRule struct {
	// hash is our hash comment's value, "" when the rule is not ours.
	hash string
	// spec is the line after "-A <chain> ", exactly as printed.
	spec string
}

// hashes lists the rules' hashes in order ("" for rules that are not ours).
func (c *kernelChain) hashes() []string {
	hs := make([]string, len(c.rules))
	for i, r := range c.rules {
		hs[i] = r.hash
	}
	return hs
}

// parseSave reads the section of one table from iptables-save output. Output
// without that table (nft prints nothing for a table that does not exist yet)
// is an empty table.
func parseSave(table string, out []byte) (*kernelTable, error) {
	kt := &kernelTable{chains: map[string]*kernelChain{}}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	inTable, lineNo := false, 0
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		switch {
		case line == "" || line[0] == '#':
		case line[0] == '*':
			inTable = line[1:] == table
		case !inTable:
		case line == "COMMIT":
			inTable = false
		case line[0] == ':':
			name, policy, _ := strings.Cut(line[1:], " ")
			policy, _, _ = strings.Cut(policy, " ")
			if _, dup := kt.chains[name]; !dup {
				kt.order = append(kt.order, name)
			}
			kt.chains[name] = &kernelChain{builtin: policy != "-" && policy != ""}
		case strings.HasPrefix(line, "-A "):
			name, spec, _ := strings.Cut(line[3:], " ")
			c := kt.chains[name]
			if c == nil {
				return nil, fmt.Errorf("iptables-save line %d: rule for undeclared chain %q", lineNo, name)
			}
			c.rules = append(c.rules, kernelRule{hash: extractHash(spec), spec: spec})
		default:
			return nil, fmt.Errorf("iptables-save line %d: unexpected %q", lineNo, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read iptables-save output: %w", err)
	}
	return kt, nil
}

// extractHash returns the value of the rule's first "cali:" comment, or "".
func extractHash(spec string) string {
	const marker = "--comment "
	rest := spec
	for {
		i := strings.Index(rest, marker)
		if i < 0 {
			return ""
		}
		rest = rest[i+len(marker):]
		quoted := strings.HasPrefix(rest, `"`)
		if quoted {
			rest = rest[1:]
		}
		if !strings.HasPrefix(rest, HashPrefix) {
			continue
		}
		v := rest[len(HashPrefix):]
		end := strings.IndexAny(v, `" `)
		if end >= 0 {
			v = v[:end]
		}
		return v
	}
}

// countRules counts the rule lines of every table in iptables-save output.
func countRules(out []byte) int {
	n := 0
	for line := range bytes.SplitSeq(out, []byte("\n")) {
		if bytes.HasPrefix(line, []byte("-A ")) {
			n++
		}
	}
	return n
}

// hasChain reports whether iptables-save output declares the chain in any table.
func hasChain(out []byte, chain string) bool {
	decl := []byte(":" + chain + " ")
	for line := range bytes.SplitSeq(out, []byte("\n")) {
		if bytes.HasPrefix(line, decl) {
			return true
		}
	}
	return false
}
