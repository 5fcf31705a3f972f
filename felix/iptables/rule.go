package iptables

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// HashPrefix starts the comment that marks every rule the engine writes:
// `-m comment --comment "cali:<hash>"`. A rule carrying it is ours wherever it
// is; a rule without it is someone else's, even inside a chain we own.
const HashPrefix = "cali:"

// hashLen is how many base64 characters of the rule's SHA-256 the comment
// keeps (96 bits): short in iptables-save output, never colliding in practice.
const hashLen = 16

// MaxChainName is the longest chain name iptables accepts (XT_EXTENSION_MAXNAMELEN - 1).
const MaxChainName = 28

// Rule is one rule as a renderer produces it: plain data, compared by value.
type Rule struct {
	// Match holds the match arguments in iptables-restore syntax, e.g.
	// "-i cali+ -m conntrack --ctstate INVALID"; empty matches every packet.
	Match string
	// Action is the target: "-j DROP", "-g cali-fw-cali1234", "-j MARK --set-xmark 0x0/0xf0000".
	Action string
	// Comment is an optional note for operators reading iptables-save; no double quotes.
	Comment string
}

// Chain is a chain a renderer wants, with all its rules in order.
type Chain struct {
	Name  string
	Rules []Rule
}

// RuleHash is the hash the engine writes into the rule's comment: it covers the
// chain name and the rule's text, so a changed rule has a new hash and the engine
// finds it without parsing iptables' normalised rendering of the matches.
func RuleHash(chain string, r Rule) string {
	var stack [256]byte
	buf := stack[:0]
	for _, s := range []string{chain, r.Match, r.Action, r.Comment} {
		buf = append(buf, s...)
		buf = append(buf, 0)
	}
	sum := sha256.Sum256(buf)
	var out [hashLen]byte
	base64.RawURLEncoding.Encode(out[:], sum[:hashLen*3/4])
	return string(out[:])
}

// ruleSpec is the rule's text after "-A <chain> ": the hash comment first, then
// the optional human comment, the matches and the action.
func ruleSpec(hash string, r Rule) string {
	// The exact length: the kernel view keeps every rule's spec, and spare
	// capacity would stay allocated with it (2 MB per 30,000 rules).
	const comment = len(` -m comment --comment ""`)
	n := comment - 1 + len(HashPrefix) + len(hash)
	if r.Comment != "" {
		n += comment + len(r.Comment)
	}
	if r.Match != "" {
		n += 1 + len(r.Match)
	}
	if r.Action != "" {
		n += 1 + len(r.Action)
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(`-m comment --comment "`)
	b.WriteString(HashPrefix)
	b.WriteString(hash)
	b.WriteByte('"')
	if r.Comment != "" {
		b.WriteString(` -m comment --comment "`)
		b.WriteString(r.Comment)
		b.WriteByte('"')
	}
	if r.Match != "" {
		b.WriteByte(' ')
		b.WriteString(r.Match)
	}
	if r.Action != "" {
		b.WriteByte(' ')
		b.WriteString(r.Action)
	}
	return b.String()
}

// Validate rejects what would break an iptables-restore input or change its meaning.
func (r Rule) Validate() error {
	for _, s := range []string{r.Match, r.Action, r.Comment} {
		if strings.ContainsAny(s, "\n\r\x00") {
			return fmt.Errorf("rule %q: contains a line break or NUL", s)
		}
	}
	// A comment may mention "cali:" (a Service "ns/mycali:http") but not
	// start with it: only a leading "cali:" marks a rule as the engine's.
	if strings.Contains(r.Comment, `"`) || strings.HasPrefix(r.Comment, HashPrefix) {
		return fmt.Errorf("rule comment %q: no double quotes and must not start with %q", r.Comment, HashPrefix)
	}
	if len(r.Comment) > 200 {
		return fmt.Errorf("rule comment %q: longer than 200 characters", r.Comment[:40]+"...")
	}
	if r.Action == "" {
		return errors.New("rule without an action")
	}
	return nil
}

// ValidateChainName checks a chain name iptables will accept.
func ValidateChainName(name string) error {
	switch {
	case name == "":
		return errors.New("empty chain name")
	case len(name) > MaxChainName:
		return fmt.Errorf("chain name %q is longer than %d characters", name, MaxChainName)
	case strings.ContainsAny(name, " \t\n\"'!"):
		return fmt.Errorf("chain name %q contains a space, quote or '!'", name)
	case strings.HasPrefix(name, "-"):
		return fmt.Errorf("chain name %q starts with '-'", name)
	}
	return nil
}

// Target returns the chain or target a rule jumps or goes to ("-j X" or "-g X").
func (r Rule) Target() string {
	if !strings.Contains(r.Action, `"`) {
		return targetOf(strings.Fields(r.Action))
	}
	return targetOf(Tokenize(r.Action))
}

// targetOf finds the argument of the last -j/--jump/-g/--goto in tokens.
func targetOf(tokens []string) string {
	target := ""
	for i := 0; i+1 < len(tokens); i++ {
		switch tokens[i] {
		case "-j", "--jump", "-g", "--goto":
			target = tokens[i+1]
		}
	}
	return target
}

// Tokenize splits iptables-save text on spaces, keeping double-quoted strings
// (comments) as one token without their quotes. Backslash escapes inside quotes
// are honoured as iptables-save writes them.
func Tokenize(s string) []string {
	var tokens []string
	var cur strings.Builder
	inQuote, escaped, have := false, false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case escaped:
			cur.WriteByte(c)
			escaped = false
		case c == '\\' && inQuote:
			escaped = true
		case c == '"':
			inQuote, have = !inQuote, true
		case c == ' ' && !inQuote:
			if have {
				tokens = append(tokens, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		tokens = append(tokens, cur.String())
	}
	return tokens
}
