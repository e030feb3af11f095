import faulthandler

faulthandler.disable()
faulthandler._sigsegv()
