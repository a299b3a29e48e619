from ext_proc.control.cli import main

main()
