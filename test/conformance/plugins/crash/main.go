// Command crash is a deliberately broken scheduler plugin for the tests of berth's plugin
// conformance suite; see package broken for what it breaks.
package main

import "berth.dev/berth/test/conformance/plugins/broken"

func main() { broken.Main(broken.Crash) }
