// Package envdefault reads flags' defaults from the environment (or a
// settings file behind it), under one set of parsing rules for every tabby
// command and component: a value that does not parse is kept as an error
// naming the variable, and the built-in default is used until the caller
// reports the errors.
package envdefault

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Reader collects parse errors while reading defaults.
type Reader struct {
	getenv func(string) string
	errs   []error
}

// New reads from getenv (os.Getenv, or a settings file's lookup).
func New(getenv func(string) string) *Reader { return &Reader{getenv: getenv} }

// Errs are the values that did not parse, each naming its variable.
func (r *Reader) Errs() []error { return r.errs }

// Str returns the trimmed value of name, or def when it is empty.
func (r *Reader) Str(name, def string) string {
	if v := strings.TrimSpace(r.getenv(name)); v != "" {
		return v
	}
	return def
}

// Dur accepts Calico's plain seconds ("90") or a Go duration ("90s").
func (r *Reader) Dur(name string, def time.Duration) time.Duration {
	v := r.Str(name, "")
	if v == "" {
		return def
	}
	d, err := ParseSeconds(v)
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s %q: want seconds or a duration such as 90s", name, v))
		return def
	}
	return d
}

// Bool accepts true/false (as strconv.ParseBool does), on/off and yes/no.
func (r *Reader) Bool(name string, def bool) bool {
	v := r.Str(name, "")
	if v == "" {
		return def
	}
	b, err := ParseBool(v)
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s %q: want true or false (or on/off)", name, v))
		return def
	}
	return b
}

// Int parses a decimal integer.
func (r *Reader) Int(name string, def int) int {
	v := r.Str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s %q: want an integer", name, v))
		return def
	}
	return n
}

// ParseSeconds accepts Calico's plain seconds ("90") or a Go duration ("90s").
func ParseSeconds(v string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		return time.Duration(n * float64(time.Second)), nil
	}
	return time.ParseDuration(v)
}

// ParseBool is strconv.ParseBool plus on/off and yes/no, case-insensitive.
func ParseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "on", "yes":
		return true, nil
	case "off", "no":
		return false, nil
	}
	return strconv.ParseBool(strings.ToLower(strings.TrimSpace(v)))
}
