//! pcap/pcapng replay: TCP directions rebuilt by sequence number into Sonde capture events
