// Command fragile is a deliberately broken CNI plugin for the tests of berth's CNI
// conformance suite; see package wrap for what it breaks.
package main

import "berth.dev/berth/test/conformance/cniplugins/wrap"

func main() { wrap.Main(wrap.FailSecondDel) }
