package emulator

func (e *Emulator) eceRoutes() {}
