package emulator

func (e *Emulator) umsRoutes() {}
