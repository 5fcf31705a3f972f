package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// envDefaults reads flags' defaults from the environment (and the settings
// file behind it). A value that does not parse is kept in errs, naming the
// variable, and the built-in default is used until the command reports errs.
type envDefaults struct {
	getenv func(string) string
	errs   []error
}

func (e *envDefaults) str(name, def string) string {
	if v := strings.TrimSpace(e.getenv(name)); v != "" {
		return v
	}
	return def
}

// dur accepts Calico's plain seconds ("90") or a Go duration ("90s").
func (e *envDefaults) dur(name string, def time.Duration) time.Duration {
	v := e.str(name, "")
	if v == "" {
		return def
	}
	d, err := parseSeconds(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s: %w", name, err))
		return def
	}
	return d
}

func (e *envDefaults) boolean(name string, def bool) bool {
	v := e.str(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s %q: want true or false", name, v))
		return def
	}
	return b
}

func (e *envDefaults) integer(name string, def int) int {
	v := e.str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s %q: want an integer", name, v))
		return def
	}
	return n
}

// parseSeconds accepts Calico's plain seconds ("90") or a Go duration ("90s").
func parseSeconds(v string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		return time.Duration(n * float64(time.Second)), nil
	}
	return time.ParseDuration(v)
}
