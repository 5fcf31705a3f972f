// Package settingsfile lets tabby-node take its settings from an optional
// file that uses the same names as the environment (ETCD_ENDPOINTS,
// CALICO_IPV4POOL_CIDR, TABBY_SERVICE_PROXY ...), so one documented set of
// names serves flags' env defaults, a DaemonSet's env and a file. Precedence:
// flags > environment > file > built-in defaults.
package settingsfile

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// EnvVar names the file when no --config-file flag is given.
const EnvVar = "TABBY_CONFIG_FILE"

// FlagName is the flag that names the file.
const FlagName = "config-file"

// Source layers a settings file under the environment and remembers which
// names were asked for, so that names in the file nobody reads are reported.
type Source struct {
	env   func(string) string
	path  string
	file  map[string]string
	asked map[string]bool
}

// Load reads the file at path ("" for none) as a YAML (or JSON) map of
// setting names to scalar values.
func Load(path string, env func(string) string) (*Source, error) {
	s := &Source{env: env, path: path, file: map[string]string{}, asked: map[string]bool{}}
	if path == "" {
		return s, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("settings file: %w", err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("settings file %s: not a map of NAME: value: %w", path, err)
	}
	var errs []error
	for k, v := range raw {
		str, err := scalar(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("settings file %s: %s: %w", path, k, err))
			continue
		}
		s.file[k] = str
	}
	return s, errors.Join(errs...)
}

func scalar(v any) (string, error) {
	switch x := v.(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	default:
		return "", fmt.Errorf("want a string, number or boolean, got %T", v)
	}
}

// Getenv returns the environment's value of name, else the file's. A blank
// environment value (a DaemonSet's empty ConfigMap key) is unset, as every
// reader of these names treats it, so it does not hide the file's.
func (s *Source) Getenv(name string) string {
	s.asked[name] = true
	if v := s.env(name); strings.TrimSpace(v) != "" {
		return v
	}
	return s.file[name]
}

// CheckUnknown reports names in the file that no setting reads (a typo
// would otherwise be ignored silently). Call it after every flag is bound.
func (s *Source) CheckUnknown() error {
	var unknown []string
	for k := range s.file {
		if !s.asked[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	return fmt.Errorf("settings file %s: unknown setting(s) %s (the names are the environment variables listed in --help)",
		s.path, strings.Join(unknown, ", "))
}

// Path finds the file's name: --config-file=X or --config-file X in args,
// else the environment's TABBY_CONFIG_FILE. Flags are parsed later, but their
// env defaults are read when they are bound, so the file must be known first.
func Path(args []string, env func(string) string) string {
	for i, a := range args {
		if a == "--" {
			break
		}
		if v, ok := strings.CutPrefix(a, "--"+FlagName+"="); ok {
			return v
		}
		if a == "--"+FlagName && i+1 < len(args) {
			return args[i+1]
		}
	}
	return env(EnvVar)
}
