// Package selector parses and evaluates the node selectors of IP pools, a subset of Calico's
// label expressions:
//
//	all()                      every node (also the empty selector)
//	has(k)                     the node has label k
//	k == "v"   k != "v"        label k equals / does not equal v (a missing label is not equal)
//	k in {"a", "b"}            label k is one of the values; k not in {...} is the negation
//	!e   e && e   e || e   (e)
//
// Strings take single or double quotes. && binds tighter than ||.
package selector

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
)

// Selector is a parsed expression; the zero value selects every node.
type Selector struct {
	src  string
	root node
}

type node interface {
	eval(labels map[string]string) bool
}

type (
	allNode struct{}
	hasNode struct{ key string }
	inNode  struct {
		key    string
		values []string
	}
	notNode struct{ x node }
	andNode struct{ l, r node }
	orNode  struct{ l, r node }
)

func (allNode) eval(map[string]string) bool     { return true }
func (n hasNode) eval(l map[string]string) bool { _, ok := l[n.key]; return ok }
func (n inNode) eval(l map[string]string) bool {
	v, ok := l[n.key]
	return ok && slices.Contains(n.values, v)
}
func (n notNode) eval(l map[string]string) bool { return !n.x.eval(l) }
func (n andNode) eval(l map[string]string) bool { return n.l.eval(l) && n.r.eval(l) }
func (n orNode) eval(l map[string]string) bool  { return n.l.eval(l) || n.r.eval(l) }

// Parse reads an expression; an empty or blank one selects every node.
func Parse(src string) (Selector, error) {
	if strings.TrimSpace(src) == "" {
		return Selector{src: src}, nil
	}
	p := &parser{src: src}
	root, err := p.or()
	if p.skip(); err == nil && p.pos < len(p.src) {
		err = p.errorf("unexpected %q", p.src[p.pos:])
	}
	if err != nil {
		return Selector{}, fmt.Errorf("node selector %q: %w", src, err)
	}
	return Selector{src: src, root: root}, nil
}

// Matches reports whether a node with these labels is selected.
func (s Selector) Matches(labels map[string]string) bool {
	return s.root == nil || s.root.eval(labels)
}

// String is the source text.
func (s Selector) String() string { return s.src }

type parser struct {
	src string
	pos int
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("at offset %d: "+format, append([]any{p.pos}, args...)...)
}

func (p *parser) skip() {
	for p.pos < len(p.src) && unicode.IsSpace(rune(p.src[p.pos])) {
		p.pos++
	}
}

// eat consumes tok if it comes next.
func (p *parser) eat(tok string) bool {
	p.skip()
	if strings.HasPrefix(p.src[p.pos:], tok) {
		p.pos += len(tok)
		return true
	}
	return false
}

func (p *parser) or() (node, error) {
	l, err := p.and()
	for err == nil && p.eat("||") {
		var r node
		if r, err = p.and(); err == nil {
			l = orNode{l, r}
		}
	}
	return l, err
}

func (p *parser) and() (node, error) {
	l, err := p.unary()
	for err == nil && p.eat("&&") {
		var r node
		if r, err = p.unary(); err == nil {
			l = andNode{l, r}
		}
	}
	return l, err
}

func (p *parser) unary() (node, error) {
	switch {
	case p.eat("!"):
		x, err := p.unary()
		return notNode{x}, err
	case p.eat("("):
		x, err := p.or()
		if err == nil && !p.eat(")") {
			err = p.errorf("missing ')'")
		}
		return x, err
	case p.eat("all()"):
		return allNode{}, nil
	case p.eat("has("):
		key := p.ident()
		if key == "" || !p.eat(")") {
			return nil, p.errorf("want has(label)")
		}
		return hasNode{key}, nil
	}
	return p.comparison()
}

func (p *parser) comparison() (node, error) {
	key := p.ident()
	if key == "" {
		return nil, p.errorf("want a label name")
	}
	switch {
	case p.eat("=="):
		v, err := p.str()
		return inNode{key, []string{v}}, err
	case p.eat("!="):
		v, err := p.str()
		return notNode{inNode{key, []string{v}}}, err
	case p.eat("not in"):
		vs, err := p.set()
		return notNode{inNode{key, vs}}, err
	case p.eat("in"):
		vs, err := p.set()
		return inNode{key, vs}, err
	}
	return nil, p.errorf("want ==, !=, in or not in after %q", key)
}

func (p *parser) ident() string {
	p.skip()
	start := p.pos
	for p.pos < len(p.src) {
		c := rune(p.src[p.pos])
		if !unicode.IsLetter(c) && !unicode.IsDigit(c) && !strings.ContainsRune("_.-/", c) {
			break
		}
		p.pos++
	}
	return p.src[start:p.pos]
}

func (p *parser) str() (string, error) {
	p.skip()
	if p.pos >= len(p.src) || (p.src[p.pos] != '"' && p.src[p.pos] != '\'') {
		return "", p.errorf("want a quoted string")
	}
	q := p.src[p.pos]
	end := strings.IndexByte(p.src[p.pos+1:], q)
	if end < 0 {
		return "", p.errorf("unterminated string")
	}
	s := p.src[p.pos+1 : p.pos+1+end]
	p.pos += end + 2
	return s, nil
}

func (p *parser) set() ([]string, error) {
	if !p.eat("{") {
		return nil, p.errorf("want '{'")
	}
	var vs []string
	for {
		v, err := p.str()
		if err != nil {
			return nil, err
		}
		vs = append(vs, v)
		if p.eat("}") {
			return vs, nil
		}
		if !p.eat(",") {
			return nil, p.errorf("want ',' or '}'")
		}
	}
}
