package apiversion

import "testing"

func TestNegotiate(t *testing.T) {
	for _, tc := range []struct {
		plugin, host []string
		want, err    string
	}{
		{plugin: []string{"v1", "v2"}, host: []string{"v1", "v2", "v3"}, want: "v2"},
		{plugin: []string{"v10", "v9"}, host: []string{"v9", "v10"}, want: "v10"},
		{plugin: []string{"v2"}, host: []string{"v1"}, err: "plugin p speaks scheduler API v2; this berth speaks v1"},
		{plugin: nil, host: []string{"v1"}, err: "plugin p announces no scheduler API version; this berth speaks v1"},
	} {
		got, err := Negotiate("scheduler", "plugin", "p", tc.plugin, tc.host)
		switch {
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("Negotiate(%v, %v) err = %v, want %q", tc.plugin, tc.host, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("Negotiate(%v, %v) = %q, %v; want %q", tc.plugin, tc.host, got, err, tc.want)
		}
	}
}
