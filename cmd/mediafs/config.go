package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// applyEnvAndFile fills every flag not given on the command line from
// MEDIAFS_<NAME> in the environment, then from the config file (lines of
// "name = value", names as the flags). Precedence: flag > env > file >
// default.
func applyEnvAndFile(fset *flag.FlagSet, configFile string) error {
	set := map[string]bool{}
	fset.Visit(func(f *flag.Flag) { set[f.Name] = true })
	file := map[string]string{}
	if configFile != "" {
		var err error
		if file, err = readKV(configFile); err != nil {
			return fmt.Errorf("config file: %w", err)
		}
	}
	var ferr error
	fset.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || ferr != nil {
			return
		}
		env := "MEDIAFS_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil {
				ferr = fmt.Errorf("%s=%q: %w", env, v, err)
			}
			return
		}
		if v, ok := file[f.Name]; ok {
			if err := f.Value.Set(v); err != nil {
				ferr = fmt.Errorf("config file %s: %s = %q: %w", configFile, f.Name, v, err)
			}
		}
	})
	for k := range file {
		if fset.Lookup(k) == nil && !credentialKey(k) {
			return fmt.Errorf("config file %s: unknown setting %q", configFile, k)
		}
	}
	return ferr
}

func credentialKey(k string) bool {
	switch strings.ToLower(k) {
	case "aws_access_key_id", "aws_secret_access_key", "aws_session_token":
		return true
	}
	return false
}

// readKV reads "name = value" or "NAME=value" lines; # and ; start comments,
// [sections] are ignored (so ~/.aws/credentials files work).
func readKV(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: expected name = value", path, n)
		}
		v = strings.TrimSpace(v)
		v = strings.Trim(v, `"'`)
		out[strings.TrimSpace(k)] = v
	}
	return out, sc.Err()
}

// credentials returns the access key, secret and session token: from
// MEDIAFS_* then AWS_* variables, else the credentials file.
func credentials(file string) (string, string, string, error) {
	ak := firstEnv("MEDIAFS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
	sk := firstEnv("MEDIAFS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
	tok := firstEnv("MEDIAFS_SESSION_TOKEN", "AWS_SESSION_TOKEN")
	if (ak == "" || sk == "") && file != "" {
		st, err := os.Stat(file)
		if err != nil {
			return "", "", "", fmt.Errorf("credentials file: %w", err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			fmt.Fprintf(os.Stderr, "mediafs: warning: credentials file %s is readable by others (mode %o)\n", file, st.Mode().Perm())
		}
		kv, err := readKV(file)
		if err != nil {
			return "", "", "", fmt.Errorf("credentials file: %w", err)
		}
		for k, v := range kv {
			switch strings.ToLower(k) {
			case "aws_access_key_id":
				ak = v
			case "aws_secret_access_key":
				sk = v
			case "aws_session_token":
				tok = v
			}
		}
	}
	if ak == "" || sk == "" {
		return "", "", "", errors.New("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or MEDIAFS_ACCESS_KEY_ID/MEDIAFS_SECRET_ACCESS_KEY), or use --credentials-file")
	}
	return ak, sk, tok, nil
}

func firstEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}

// sizeFlag accepts 10G, 512M, 1.5T, plain bytes, or N% of the cache disk.
type sizeFlag struct {
	bytes   int64
	percent float64
}

func (s *sizeFlag) String() string {
	if s.percent > 0 {
		return fmt.Sprintf("%g%%", s.percent)
	}
	return strconv.FormatInt(s.bytes, 10)
}

func (s *sizeFlag) Set(v string) error {
	v = strings.TrimSpace(v)
	if strings.HasSuffix(v, "%") {
		p, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
		if err != nil || p <= 0 || p > 100 {
			return fmt.Errorf("bad percentage %q", v)
		}
		s.percent, s.bytes = p, 0
		return nil
	}
	mult := int64(1)
	u := strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(v, "iB"), "B"))
	if n := len(u); n > 0 {
		switch u[n-1] {
		case 'K':
			mult, u = 1<<10, u[:n-1]
		case 'M':
			mult, u = 1<<20, u[:n-1]
		case 'G':
			mult, u = 1<<30, u[:n-1]
		case 'T':
			mult, u = 1<<40, u[:n-1]
		}
	}
	f, err := strconv.ParseFloat(u, 64)
	if err != nil || f < 0 {
		return fmt.Errorf("bad size %q (e.g. 10G, 512M, 80%%)", v)
	}
	s.bytes, s.percent = int64(f*float64(mult)), 0
	return nil
}

// resolve turns a percentage into bytes of the disk holding dir.
func (s *sizeFlag) resolve(dir string) int64 {
	if s.percent == 0 {
		return s.bytes
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	return int64(float64(st.Blocks) * float64(st.Bsize) * s.percent / 100)
}

// modeFlag parses octal permission bits.
type modeFlag uint32

func (m *modeFlag) String() string { return fmt.Sprintf("%04o", uint32(*m)) }

func (m *modeFlag) Set(v string) error {
	n, err := strconv.ParseUint(v, 8, 32)
	if err != nil || n > 07777 {
		return fmt.Errorf("bad mode %q (octal, e.g. 0644)", v)
	}
	*m = modeFlag(n)
	return nil
}
