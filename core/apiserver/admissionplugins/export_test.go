package admissionplugins

// BinDir is where TestMain built the plugins, for the integration tests of package
// admissionplugins_test.
func BinDir() string { return binDir }
