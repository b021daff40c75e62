package emulator

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestParseSiteContext(t *testing.T) {
	for _, tc := range []struct {
		header  []string
		account string
		channel int
		err     string
	}{
		{header: []string{`{"account":"5f689caa4216e7000750d1ef","channel":12,"stage":"production","date":"2023-01-01T00:00:00.000Z"}`}, account: testAccount, channel: 12},
		{header: []string{`{"account":"1234abcd5678efgh9ijklmno","channel":"1","date":"2021-06-21","site":"fabric.inc"}`}, account: "1234abcd5678efgh9ijklmno", channel: 1},
		{header: nil, err: "x-site-context header is required"},
		{header: []string{`{"account":"5f689caa4216e7000750d1ef"}`, `{"account":"5f689caa4216e7000750d1ef"}`}, err: "sent once"},
		{header: []string{`account=5f689caa4216e7000750d1ef`}, err: "must be a JSON object"},
		{header: []string{`["5f689caa4216e7000750d1ef"]`}, err: "must be a JSON object"},
		{header: []string{`null`}, err: "must be a JSON object"},
		{header: []string{`{"channel":12}`}, err: "account is required"},
		{header: []string{`{"account":12}`}, err: "account is required and must be a string"},
		{header: []string{`{"account":"5f689caa4216e7000750d1e"}`}, err: "24-character"},
		{header: []string{`{"account":"5f689caa4216e7000750d1ef\n"}`}, err: "24-character"},
		{header: []string{`{"account":"5f689caa-216e7000750d1ef0"}`}, err: "24-character"},
		{header: []string{`{"account":"5f689caa4216e7000750d1ef","channel":"US"}`}, err: "channel must be a number"},
		{header: []string{`{"account":"5f689caa4216e7000750d1ef","channel":true}`}, err: "channel must be a number"},
		{header: []string{`{"account":"5f689caa4216e7000750d1ef","stage":1}`}, err: "stage must be a string"},
		{header: []string{`{"account":"5f689caa4216e7000750d1ef","date":"yesterday"}`}, err: "date must be an ISO 8601"},
		{header: []string{`{"account":"5f689caa4216e7000750d1ef","date":20230101}`}, err: "date must be a string"},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		for _, v := range tc.header {
			r.Header.Add("X-Site-Context", v)
		}
		sc, err := parseSiteContext(r)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want one containing %q", tc.header, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.header, err)
		case tc.err == "" && (sc.Account != tc.account || sc.Channel != tc.channel):
			t.Errorf("%q: parsed %+v", tc.header, sc)
		}
	}
}
